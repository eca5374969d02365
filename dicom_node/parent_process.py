"""A child process that must not outlive its parent (the DICOM node's receiving processes, ``m3edge serve``'s worker).

The kernel does it (Linux ``prctl(PR_SET_PDEATHSIG)``): the child gets a signal when the parent's thread that started
it ends, even on SIGKILL of the parent, with no thread polling the parent's pid.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

__all__ = ["signal_when_parent_dies"]

LOGGER = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def signal_when_parent_dies(parent_pid: int, signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel for ``signum`` when the parent (``parent_pid``) goes; False when it is already gone (it died
    before the request was made: the caller should stop now). Elsewhere than Linux this only checks the parent."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            LOGGER.warning("PR_SET_PDEATHSIG refused (errno %d): this process will not notice its parent's death",
                           ctypes.get_errno())
    return os.getppid() == parent_pid
