"""pynetdicom's UID checks during association negotiation, done once per UID instead of once per use.

Decoding an A-ASSOCIATE-RQ and building the A-ASSOCIATE-AC, pynetdicom passes every abstract and transfer syntax
through ``pynetdicom.utils.set_uid``: pydicom's ``UID()`` (a regular expression), pynetdicom's own validator (another)
and ``UID.is_valid`` (a third), several times per presentation context. A sender like ``storescu`` proposes over a
hundred contexts, and the node spent about 13 ms of CPU per association there (of 58 ms per single-instance
association, against Orthanc's 35 ms). The UIDs are always the same few hundred SOP classes and transfer syntaxes, so
:func:`install` puts a memoised ``set_uid`` into the negotiation modules: same arguments, same UID object back (UIDs
are immutable strings), and a value that fails is not remembered, so it fails (and logs) every time as before; a value
pydicom only warns about (a NUL-padded UID from a peer's PDU) warns the first time in each process, not on every
association.
Per-instance UIDs (``dimse_primitives``: the SOP Instance UID of each C-STORE) keep the plain function.

``PresentationContext.add_transfer_syntax`` does the same checks itself (``UID()``, ``validate_uid``, ``is_valid``,
``is_transfer_syntax``) for every transfer syntax of every context, about 400 times per such association (decoding the
request, then copying the contexts while negotiating). :func:`install` gives it a fast path for a value it has already
added without a word (a valid, registered transfer syntax, given exactly: no padding): that same UID object is
appended, unless already there, as the original would. Anything else (a new value, one that made it warn or raise, a
private transfer syntax, a UID carrying an encoding) goes through the original, every time.
"""

from __future__ import annotations

import functools
import threading

from pydicom.uid import UID
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


def _memoised_add_transfer_syntax(original):
    clean: dict[str | bytes, UID] = {}  # value -> the UID the original appended for it without logging anything

    @functools.wraps(original)
    def add_transfer_syntax(self, syntax):
        cacheable = isinstance(syntax, (str, bytes)) and not hasattr(syntax, "_PRIVATE_TS_ENCODING")
        if cacheable:
            uid = clean.get(syntax)
            if uid is not None:
                if uid not in self._transfer_syntax:
                    self._transfer_syntax.append(uid)
                return
        count = len(self._transfer_syntax)
        original(self, syntax)
        if cacheable and len(self._transfer_syntax) == count + 1 and len(clean) < _CACHE_SIZE:
            uid = self._transfer_syntax[-1]
            text = syntax.decode("ascii", "replace") if isinstance(syntax, bytes) else syntax
            # only a value that is already the UID it gives (padding makes pydicom warn, every time), and that
            # nothing was logged for
            if uid == text and uid.is_valid and not uid.is_private and uid.is_transfer_syntax:
                clean[syntax] = uid

    add_transfer_syntax.__wrapped_original__ = original
    return add_transfer_syntax


def install() -> None:
    """Use the memoised ``set_uid`` in pynetdicom's negotiation modules and the fast path of
    ``PresentationContext.add_transfer_syntax`` (idempotent, thread-safe)."""
    with _lock:
        context = presentation.PresentationContext
        if getattr(context.add_transfer_syntax, "__wrapped_original__", None) is None:
            context.add_transfer_syntax = _memoised_add_transfer_syntax(context.add_transfer_syntax)
        if getattr(presentation.set_uid, "__wrapped_original__", None) is not None:
            return
        memoised = _memoised(utils.set_uid)
        for module in NEGOTIATION_MODULES:
            module.set_uid = memoised
