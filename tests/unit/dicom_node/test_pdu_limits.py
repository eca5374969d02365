"""The PDU framing monitor (dicom_node.scp.pdu_limits) on byte streams cut every possible way."""

from __future__ import annotations

import struct

import pytest

from dicom_node.scp.pdu_limits import AbortReason, PduLimits, PduStreamMonitor
from tests.support.raw_dicom import associate_rq, p_data_tf, pdu_header

LIMITS = PduLimits(max_pdu_length=16384, max_data_set_bytes=100_000)


def _feed(stream: bytes, size: int):
    monitor = PduStreamMonitor(LIMITS)
    for start in range(0, len(stream), size):
        refusal = monitor.feed(stream[start:start + size])
        if refusal is not None:
            return monitor, refusal
    return monitor, None


def _data_set(total: int, fragment: int) -> bytes:
    pieces, sent = [], 0
    while sent < total:
        n = min(fragment, total - sent)
        sent += n
        pieces.append(p_data_tf(b"\0" * n, command=False, last=sent == total))
    return b"".join(pieces)


@pytest.mark.parametrize("size", [1, 5, 6, 7, 4096, 1 << 20])
def test_a_conformant_stream_passes_however_it_is_cut(size):
    stream = (associate_rq() + p_data_tf(b"\1" * 100) + _data_set(99_000, 16_000) + p_data_tf(b"\1" * 100)
              + _data_set(99_000, 9_000) + pdu_header(0x05, 4) + b"\0" * 4)
    monitor, refusal = _feed(stream, size)
    assert refusal is None and monitor.association_requested


@pytest.mark.parametrize("size", [1, 7, 4096])
@pytest.mark.parametrize("stream, reason, words", [
    (pdu_header(0x01, 1 << 30), AbortReason.INVALID_PDU_PARAMETER_VALUE, "A-ASSOCIATE-RQ of 1073741824 bytes"),
    (pdu_header(0x04, 10) + b"\0" * 10, AbortReason.UNEXPECTED_PDU, "not an A-ASSOCIATE-RQ"),
    (pdu_header(0x09, 4) + b"\0" * 4, AbortReason.UNRECOGNIZED_PDU, "unknown PDU type 0x09"),
    (associate_rq() + pdu_header(0x04, 16385), AbortReason.INVALID_PDU_PARAMETER_VALUE, "16384 negotiated"),
    (associate_rq() + pdu_header(0x05, 5), AbortReason.INVALID_PDU_PARAMETER_VALUE, "not 4"),
    (associate_rq() + associate_rq(), AbortReason.UNEXPECTED_PDU, "after the association request"),
    (associate_rq() + _data_set(100_001, 16_000), AbortReason.NOT_SPECIFIED, "DICOM_MAX_INSTANCE_BYTES"),
    (associate_rq() + pdu_header(0x04, 10) + struct.pack(">LBB", 100, 1, 0) + b"\0" * 4,
     AbortReason.INVALID_PDU_PARAMETER_VALUE, "does not fit"),
], ids=["huge-rq", "first-not-rq", "unknown-type", "p-data-over", "release-length", "second-rq", "data-set",
        "pdv-overflow"])
def test_each_broken_limit_is_refused_with_its_reason(stream, reason, words, size):
    _, refusal = _feed(stream + b"\0" * 64, size)
    assert refusal is not None and refusal.reason is reason and words in refusal.message
    assert refusal.abort_pdu() == bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, reason])


def test_a_data_set_limit_counts_one_message_at_a_time():
    monitor, refusal = _feed(associate_rq() + _data_set(90_000, 16_000) * 5, 4096)
    assert refusal is None  # five data sets of 90 000 bytes, each under the 100 000 limit
