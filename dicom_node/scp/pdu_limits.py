"""What a peer may send on one connection, checked on the bytes as they are read, before pynetdicom sees them.

pynetdicom reads each PDU's 6-byte header, then as many bytes as the header declares (4 KiB at a time, so nothing is
allocated from the declared length). It has no bound of its own: a header declaring 2 GiB makes it read and keep up
to 2 GiB, and a P-DATA-TF longer than the maximum length we negotiated is accepted. :class:`PduStreamMonitor` follows
the PDU framing of everything a peer sends (PS3.8 9.3) and says when the peer breaks a limit:

- the first PDU must be an A-ASSOCIATE-RQ of at most ``max_associate_rq_length`` bytes (a storescu proposal of 128
  presentation contexts, each with every transfer syntax we accept, is under 50 KiB);
- after it, a P-DATA-TF's length may not exceed our maximum PDU length (``DICOM_MAX_PDU_SIZE``, what we told the
  peer in the A-ASSOCIATE-AC); A-RELEASE-RQ/RP and A-ABORT are 4 bytes long; anything else is refused;
- the fragments of one DIMSE data set together may not exceed ``max_data_set_bytes`` (``DICOM_MAX_INSTANCE_BYTES``:
  pynetdicom keeps a received data set in memory), nor those of one command set ``MAX_COMMAND_BYTES``.

The monitor only looks at headers (PDU, then PDV item headers inside P-DATA-TF): it costs a few operations per read,
whatever the size of the data. ``dicom_node.scp.guarded_server`` answers a broken limit with an A-ABORT and closes
the connection.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "PduType", "AbortReason", "PduLimits", "PduRefusal", "PduStreamMonitor", "MAX_COMMAND_BYTES",
    "DEFAULT_MAX_ASSOCIATE_RQ_LENGTH",
]

MAX_COMMAND_BYTES = 64 * 1024  # a DIMSE command set is a few hundred bytes; identifiers travel as data sets
DEFAULT_MAX_ASSOCIATE_RQ_LENGTH = 256 * 1024
_PDU_HEADER = struct.Struct(">BBL")
_PDV_HEADER = struct.Struct(">LBB")  # item length, presentation context ID, message control header
_SHORT_PDU_LENGTH = 4  # A-RELEASE-RQ, A-RELEASE-RP, A-ABORT
_COMMAND, _LAST = 0x01, 0x02  # message control header bits


class PduType(enum.IntEnum):
    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


class AbortReason(enum.IntEnum):
    """A-ABORT reason/diagnostic when the service provider (source 2) aborts (PS3.8 9.3.8)."""

    NOT_SPECIFIED = 0x00
    UNRECOGNIZED_PDU = 0x01
    UNEXPECTED_PDU = 0x02
    UNRECOGNIZED_PDU_PARAMETER = 0x04
    UNEXPECTED_PDU_PARAMETER = 0x05
    INVALID_PDU_PARAMETER_VALUE = 0x06


@dataclass(frozen=True)
class PduLimits:
    """``max_pdu_length``: our maximum length of a P-DATA-TF's variable field (its length field), as negotiated."""

    max_pdu_length: int
    max_data_set_bytes: int
    max_associate_rq_length: int = DEFAULT_MAX_ASSOCIATE_RQ_LENGTH

    def __post_init__(self) -> None:
        for name in ("max_pdu_length", "max_data_set_bytes", "max_associate_rq_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")


@dataclass(frozen=True)
class PduRefusal:
    """Why a peer's stream is refused, worded for the log (no patient data: only sizes and PDU types)."""

    reason: AbortReason
    message: str

    def abort_pdu(self) -> bytes:
        """The A-ABORT PDU to send: type 07H, length 4, source 2 (service provider), this reason."""
        return _PDU_HEADER.pack(PduType.ABORT, 0, _SHORT_PDU_LENGTH) + bytes((0, 0, 0x02, self.reason))


class PduStreamMonitor:
    """Follows the PDU framing of the bytes one peer sends; :meth:`feed` returns a refusal once a limit is broken.

    Not thread-safe: one connection's reads come from one thread (pynetdicom's DUL thread).
    """

    def __init__(self, limits: PduLimits) -> None:
        self._limits = limits
        self._pending = bytearray()  # an incomplete PDU or PDV header
        self._pdu_type: int | None = None
        self._pdu_left = 0  # bytes of the current PDU's body still to come
        self._pdv_left = 0  # bytes of the current PDV item's value still to come
        self._pdv_is_command = False
        self._pdv_is_last = False
        self._message_bytes = {True: 0, False: 0}  # command / data set bytes of the DIMSE message being received
        self._pdus = 0
        self.refusal: PduRefusal | None = None

    @property
    def association_requested(self) -> bool:
        """Whether the whole first PDU (the A-ASSOCIATE-RQ) has arrived."""
        return self._pdus > 1 or (self._pdus == 1 and self._pdu_type is None)

    def feed(self, data: bytes | memoryview) -> PduRefusal | None:
        """Account for ``data``, the next bytes read from the peer; return the refusal (also kept) once refused."""
        if self.refusal is not None:
            return self.refusal
        size = len(data)
        if self._pdv_left > size:  # the whole read lies inside a PDV item's value: the common case, kept cheap
            self._pdv_left -= size
            self._pdu_left -= size
            return None
        view = memoryview(data)
        while view and self.refusal is None:
            view = self._pdu_header(view) if self._pdu_type is None else self._pdu_body(view)
        return self.refusal

    def _take(self, view: memoryview, size: int) -> tuple[bytes | None, memoryview]:
        """Complete a header of ``size`` bytes from ``_pending`` + ``view``; (header or None, what is left)."""
        need = size - len(self._pending)
        self._pending += view[:need]
        if len(self._pending) < size:
            return None, view[len(view):]
        header = bytes(self._pending)
        self._pending.clear()
        return header, view[need:]

    def _refuse(self, reason: AbortReason, message: str) -> memoryview:
        self.refusal = PduRefusal(reason, message)
        return memoryview(b"")

    def _pdu_header(self, view: memoryview) -> memoryview:
        header, view = self._take(view, _PDU_HEADER.size)
        if header is None:
            return view
        pdu_type, _, length = _PDU_HEADER.unpack(header)
        self._pdus += 1
        refusal = self._check_pdu(pdu_type, length)
        if refusal is not None:
            return self._refuse(*refusal)
        self._pdu_type, self._pdu_left = pdu_type, length
        if length == 0:
            self._pdu_type = None
        return view

    def _check_pdu(self, pdu_type: int, length: int) -> tuple[AbortReason, str] | None:
        limits = self._limits
        try:
            kind = PduType(pdu_type)
        except ValueError:
            return AbortReason.UNRECOGNIZED_PDU, f"unknown PDU type 0x{pdu_type:02X}"
        if self._pdus == 1:
            if kind is not PduType.ASSOCIATE_RQ:
                return AbortReason.UNEXPECTED_PDU, f"the first PDU is {kind.name}, not an A-ASSOCIATE-RQ"
            if length > limits.max_associate_rq_length:
                return (AbortReason.INVALID_PDU_PARAMETER_VALUE,
                        f"an A-ASSOCIATE-RQ of {length} bytes declared, more than {limits.max_associate_rq_length}")
            return None
        if kind is PduType.P_DATA_TF:
            if length > limits.max_pdu_length:
                return (AbortReason.INVALID_PDU_PARAMETER_VALUE,
                        f"a P-DATA-TF of {length} bytes declared, more than the {limits.max_pdu_length} negotiated "
                        "(DICOM_MAX_PDU_SIZE)")
            return None
        if kind in (PduType.RELEASE_RQ, PduType.RELEASE_RP, PduType.ABORT):
            if length != _SHORT_PDU_LENGTH:
                return AbortReason.INVALID_PDU_PARAMETER_VALUE, f"{kind.name} of {length} bytes declared, not 4"
            return None
        return AbortReason.UNEXPECTED_PDU, f"{kind.name} received after the association request"

    def _pdu_body(self, view: memoryview) -> memoryview:
        if self._pdu_type != PduType.P_DATA_TF:
            used = min(len(view), self._pdu_left)
            self._end_of_pdu_bytes(used)
            return view[used:]
        if self._pdv_left:
            used = min(len(view), self._pdv_left)
            self._pdv_left -= used
            self._end_of_pdu_bytes(used)
            if not self._pdv_left:
                self._end_of_fragment()
            return view[used:]
        return self._pdv_header(view)

    def _pdv_header(self, view: memoryview) -> memoryview:
        header, rest = self._take(view, _PDV_HEADER.size)
        self._pdu_left -= len(view) - len(rest)
        if self._pdu_left < 0 or (header is None and not self._pdu_left):
            return self._refuse(AbortReason.INVALID_PDU_PARAMETER_VALUE, "a P-DATA-TF ends inside a PDV item header")
        if header is None:
            return rest
        item_length, _context, control = _PDV_HEADER.unpack(header)
        value_length = item_length - 2  # the context ID and message control header are part of the item
        if item_length < 2 or value_length > self._pdu_left:
            return self._refuse(AbortReason.INVALID_PDU_PARAMETER_VALUE,
                                "a PDV item's length does not fit in its P-DATA-TF")
        self._pdv_is_command = bool(control & _COMMAND)
        self._pdv_is_last = bool(control & _LAST)
        total = self._message_bytes[self._pdv_is_command] + value_length
        limit = MAX_COMMAND_BYTES if self._pdv_is_command else self._limits.max_data_set_bytes
        if total > limit:
            what = "command set" if self._pdv_is_command else "data set (DICOM_MAX_INSTANCE_BYTES)"
            return self._refuse(AbortReason.NOT_SPECIFIED, f"a {what} of more than {limit} bytes")
        self._message_bytes[self._pdv_is_command] = total
        self._pdv_left = value_length
        if not value_length:
            self._end_of_fragment()
        if not self._pdu_left:
            self._pdu_type = None
        return rest

    def _end_of_pdu_bytes(self, used: int) -> None:
        self._pdu_left -= used
        if not self._pdu_left:
            self._pdu_type = None

    def _end_of_fragment(self) -> None:
        if self._pdv_is_last:
            if self._pdv_is_command:
                self._message_bytes[True] = 0
            else:  # the data set is complete: the next message starts from nothing
                self._message_bytes = {True: 0, False: 0}
