"""pynetdicom's UID checks during association negotiation, done once per UID instead of once per use.

Decoding an A-ASSOCIATE-RQ and building the A-ASSOCIATE-AC, pynetdicom passes every abstract and transfer syntax
through ``pynetdicom.utils.set_uid``: pydicom's ``UID()`` (a regular expression), pynetdicom's own validator (another)
and ``UID.is_valid`` (a third), several times per presentation context. A sender like ``storescu`` proposes over a
hundred contexts, and the node spent about 13 ms of CPU per association there (of 58 ms per single-instance
association, against Orthanc's 35 ms). The UIDs are always the same few hundred SOP classes and transfer syntaxes, so
:func:`install` puts a memoised ``set_uid`` into the negotiation modules: same arguments, same UID object back (UIDs
are immutable strings), and a value that fails is not remembered, so it fails (and logs) every time as before.
Per-instance UIDs (``dimse_primitives``: the SOP Instance UID of each C-STORE) keep the plain function.
"""

from __future__ import annotations

import functools
import threading

from pynetdicom import pdu_items, pdu_primitives, presentation, utils

__all__ = ["install", "NEGOTIATION_MODULES"]

NEGOTIATION_MODULES = (pdu_items, pdu_primitives, presentation)
_CACHE_SIZE = 4096
_lock = threading.Lock()


def _memoised(original):
    cached = functools.lru_cache(maxsize=_CACHE_SIZE)(original)

    @functools.wraps(original)
    def set_uid(value, name, allow_empty=True, allow_none=True, validate=True):
        if hasattr(value, "_PRIVATE_TS_ENCODING"):  # a private transfer syntax carries its encoding: keep the object
            return original(value, name, allow_empty, allow_none, validate)
        try:
            return cached(value, name, allow_empty, allow_none, validate)
        except TypeError:  # an unhashable value: pynetdicom says what is wrong with it
            return original(value, name, allow_empty, allow_none, validate)

    set_uid.__wrapped_original__ = original
    return set_uid


def install() -> None:
    """Use the memoised ``set_uid`` in pynetdicom's negotiation modules (idempotent, thread-safe)."""
    with _lock:
        if getattr(presentation.set_uid, "__wrapped_original__", None) is not None:
            return
        memoised = _memoised(utils.set_uid)
        for module in NEGOTIATION_MODULES:
            module.set_uid = memoised
