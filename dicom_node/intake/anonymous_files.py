"""Files without a name until they are complete: Linux ``O_TMPFILE`` opened in the target directory, given their
final name by ``linkat`` once written and synced.

Compared with a named temporary file linked into place and unlinked afterwards, there is no temporary name to
create and remove (two directory updates less per instance, and no shared ``.incoming`` directory every writer
contends on), and a crash leaves nothing behind to clean up: the kernel frees an unnamed file when it is closed.

``linkat`` needs one of two ways to name the open file: ``AT_EMPTY_PATH`` on the descriptor (the process needs
CAP_DAC_READ_SEARCH before Linux 6.10, not after), or the ``/proc/self/fd`` link with ``AT_SYMLINK_FOLLOW`` (some
sandboxes refuse it). :func:`probe` tries both in a directory and returns the one that works, or None (other
systems, file systems without ``O_TMPFILE``): the spool then keeps its named temporary files.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["AnonymousLinker", "open_anonymous", "probe"]

LOGGER = logging.getLogger(__name__)

_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)

AnonymousLinker = Callable[[int, str], None]  # (open descriptor, final path): raises FileExistsError, OSError


def open_anonymous(directory: str | Path) -> int:
    """A new unnamed file in ``directory``, open for reading and writing."""
    return os.open(directory, _O_TMPFILE | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o640)


def _libc_linkat():
    libc = ctypes.CDLL(None, use_errno=True)
    linkat = libc.linkat
    linkat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
    linkat.restype = ctypes.c_int
    return linkat


def _empty_path_linker() -> AnonymousLinker:
    linkat = _libc_linkat()

    def link(fd: int, target: str) -> None:
        if linkat(fd, b"", _AT_FDCWD, os.fsencode(target), _AT_EMPTY_PATH) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(target))

    return link


def _proc_linker(fd: int, target: str) -> None:
    os.link(f"/proc/self/fd/{fd}", target, follow_symlinks=True)


def probe(directory: Path) -> tuple[str, AnonymousLinker] | None:
    """The way to name unnamed files that works in ``directory`` (an existing, writable directory), or None."""
    if not sys.platform.startswith("linux") or not _O_TMPFILE:
        return None
    candidates: list[tuple[str, Callable[[], AnonymousLinker]]] = [
        ("linkat(AT_EMPTY_PATH)", _empty_path_linker), ("linkat(/proc/self/fd)", lambda: _proc_linker),
    ]
    for number, (name, make) in enumerate(candidates):
        target = directory / f".probe-{os.getpid()}-{number}"
        fd = -1
        try:
            link = make()
            fd = open_anonymous(directory)
            os.write(fd, b"probe")
            link(fd, str(target))
            if target.read_bytes() == b"probe":
                return name, link
        except (OSError, AttributeError) as exc:
            LOGGER.debug("unnamed files in %s: %s does not work (%s)", directory, name, exc)
        finally:
            if fd >= 0:
                os.close(fd)
            target.unlink(missing_ok=True)
    return None
