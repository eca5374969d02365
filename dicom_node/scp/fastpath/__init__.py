"""The one place where the node reaches into pynetdicom's internals, for speed, and only on the versions measured.

What stays here earned its place in ``python -m bench.ingest`` (same run, fast path on and off, alternating): at
least 20% more throughput for one sending association (how a PACS sends a study) or for 8 concurrent senders.
Figures on this project's 2-core development machine, which other work shared (medians of alternating runs; the
spread is wide, the ordering was the same in every round):

PLACEHOLDER_FIGURES

- ``reactor``: pynetdicom's two threads per association poll their queues with 1 ms sleeps; the event-driven
  reactor makes them wait for news instead (``dicom_node.scp.fastpath.reactor``), and reads a P-DATA-TF in data
  transfer straight into DIMSE without running the state machine for it.
- ``dimse``: a plain C-STORE-RQ command set decoded and its C-STORE-RSP encoded with ``struct`` instead of pydicom
  (``dicom_node.scp.fastpath.dimse``).

Removed after measuring (no 20% anywhere): the memoised UID checks during association negotiation, the shared
(not deep-copied) presentation contexts, and whole-PDU ``recv_into`` reads (which also allocated a buffer of the
length a peer declared: the memory attack of issue 13). What pynetdicom offers publicly is used instead where it
exists (``_config.LOG_HANDLER_LEVEL = "none"`` rather than unbinding its logging handlers).

The fast path installs itself only on the pynetdicom versions in ``TESTED_VERSIONS`` (checked when the node starts;
any other version runs stock pynetdicom and says so once in the log), and only while ``DICOM_FASTPATH`` is on. The
SCP tests run both ways (``tests/conftest.py``: ``M3EDGE_TEST_DICOM_FASTPATH``, and CI runs both). Both ways, every
byte comes through ``dicom_node.scp.guarded_server``'s checks.
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import version

__all__ = ["TESTED_VERSIONS", "available", "request_handler", "describe"]

LOGGER = logging.getLogger(__name__)

TESTED_VERSIONS = frozenset({"3.0.4"})
_warned = threading.Event()


def installed_version() -> str:
    return version("pynetdicom")


def available() -> bool:
    """Whether the installed pynetdicom is a version the fast path was tested with (logged once when it is not)."""
    if installed_version() in TESTED_VERSIONS:
        return True
    if not _warned.is_set():
        _warned.set()
        LOGGER.warning("pynetdicom %s is not a version the DICOM fast path was tested with (%s): the node runs "
                       "stock pynetdicom", installed_version(), ", ".join(sorted(TESTED_VERSIONS)))
    return False


def request_handler():
    """The fast path's request handler for ``AE.make_server(request_handler=...)``, or None to run stock pynetdicom."""
    if not available():
        return None
    from dicom_node.scp.fastpath.reactor import EventDrivenRequestHandler

    return EventDrivenRequestHandler


def describe(enabled: bool) -> str:
    """How the node runs pynetdicom, for the start-up log line."""
    if not enabled:
        return f"{installed_version()} (stock: DICOM_FASTPATH is off)"
    if installed_version() not in TESTED_VERSIONS:
        return f"{installed_version()} (stock: the fast path was tested with {', '.join(sorted(TESTED_VERSIONS))})"
    return f"{installed_version()} with the fast path"
