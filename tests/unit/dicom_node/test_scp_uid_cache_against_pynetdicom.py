"""The fast ``add_transfer_syntax`` against pynetdicom's own, value by value: the same UIDs, errors and log records."""

from __future__ import annotations

import logging

import pytest
from pydicom.uid import UID
from pynetdicom import presentation

from dicom_node.scp import uid_cache

_ORIGINAL = getattr(presentation.PresentationContext.add_transfer_syntax, "__wrapped_original__",
                    presentation.PresentationContext.add_transfer_syntax)


def _private(value, encoding=(False, True)):
    uid = UID(value)
    if encoding is not None:
        uid.set_private_encoding(*encoding)
    return uid


_PUBLIC_WITH_ENCODING = _private("1.2.840.10008.1.2.1")

VALUES = [
    "1.2.840.10008.1.2.1", b"1.2.840.10008.1.2.1", UID("1.2.840.10008.1.2.1"), " 1.2.840.10008.1.2.1 ",
    "1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.1\x00", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50",
    "", b"", None, 3, 1.5, bytearray(b"1.2.840.10008.1.2"), ["1.2.840.10008.1.2"],
    "1.2.a", "1..2", "1.2." + "3" * 70, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5",
    _private("1.2.3.4.5"), _private("1.2.3.4.6", (True, True)), b"\xff\xfe", "1.2.840.10008.1.2.1 ",
    _PUBLIC_WITH_ENCODING,
]


def _run(add, sequence, caplog):
    context = presentation.PresentationContext()
    outcome = []
    for value in sequence:
        caplog.clear()
        try:
            add(context, value)
            error = None
        except Exception as exc:  # noqa: BLE001
            error = (type(exc), str(exc))
        outcome.append((error, [(r.levelname, r.getMessage()) for r in caplog.records]))
    return outcome, [(str(u), type(u), getattr(u, "_PRIVATE_TS_ENCODING", None)) for u in context.transfer_syntax]


@pytest.mark.filterwarnings("ignore")
def test_every_value_twice_in_many_orders(caplog, monkeypatch):
    values = VALUES
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(presentation.PresentationContext, "add_transfer_syntax", _ORIGINAL)
    uid_cache.install()
    fast = presentation.PresentationContext.add_transfer_syntax
    assert fast is not _ORIGINAL
    sequences = [values, values[::-1], values + values, [v for pair in zip(values, values) for v in pair]]
    for sequence in sequences * 3:
        assert _run(fast, sequence, caplog) == _run(_ORIGINAL, sequence, caplog)
