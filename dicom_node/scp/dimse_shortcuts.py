"""Short ways through pynetdicom's DIMSE layer for the one message the node receives by the thousand: C-STORE.

pynetdicom decodes every command set with pydicom, converts it element by element (re-validating each UID) into a
primitive, and encodes each response with pydicom twice (once more for the group length). For a 0.5 MB CT slice
that was as much CPU as writing the slice durably. ``ShortcutDimse`` (installed on accepted associations by
``dicom_node.scp.reactor``) reads a plain C-STORE-RQ command set and writes a plain C-STORE-RSP with ``struct``,
building the same primitives pynetdicom builds (its setters still validate the UIDs). Any other message, any
command element it does not expect (a C-MOVE originator, a fragmented command, ...), and any association where
someone listens to the DIMSE events goes pynetdicom's way, unchanged.
"""

from __future__ import annotations

import struct
from io import BytesIO

from pynetdicom import _config, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

__all__ = ["ShortcutDimse", "encode_store_response", "decode_store_request"]

_C_STORE_RQ = 0x0001
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
_UL = struct.Struct("<HHLL")
_US = struct.Struct("<HHLH")
_ELEMENT_HEADER = struct.Struct("<HHL")
_COMMAND = 0x01  # message control header: command fragment
_LAST = 0x02  # message control header: last fragment
# (0000,eeee) elements of a plain C-STORE-RQ: group length, SOP class, command field, message ID, priority,
# data set type, SOP instance. Anything else (move originator, ...) takes pynetdicom's way.
_STORE_REQUEST_ELEMENTS = {0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000}
_US_ELEMENTS = {0x0100, 0x0110, 0x0700, 0x0800}


def _uid_element(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\0"
    return _ELEMENT_HEADER.pack(0x0000, element, len(value)) + value


def encode_store_response(primitive: C_STORE) -> bytes | None:
    """The command set of a plain C-STORE-RSP (no error comment or offending element), as pynetdicom encodes it
    (implicit VR little endian, elements in tag order, group length first); None for any other message."""
    if not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None or primitive.Status is None:
        return None
    if primitive.ErrorComment is not None or primitive.OffendingElement is not None or primitive.DataSet:
        return None
    if getattr(primitive, "_dataset_path", None):
        return None
    sop_class, sop_instance = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
    body = b"".join((
        _uid_element(0x0002, sop_class) if sop_class else b"",
        _US.pack(0x0000, 0x0100, 2, _C_STORE_RSP),
        _US.pack(0x0000, 0x0120, 2, primitive.MessageIDBeingRespondedTo),
        _US.pack(0x0000, 0x0800, 2, _NO_DATA_SET),
        _US.pack(0x0000, 0x0900, 2, primitive.Status),
        _uid_element(0x1000, sop_instance) if sop_instance else b"",
    ))
    return _UL.pack(0x0000, 0x0000, 4, len(body)) + body


def decode_store_request(command: bytes) -> C_STORE | None:
    """The C_STORE primitive (without its data set) of a plain C-STORE-RQ command set, or None for anything else.

    Raises what pynetdicom's setters raise for invalid values (a malformed UID), like pynetdicom's own decoding.
    """
    values: dict[int, bytes] = {}
    offset, end = 0, len(command)
    while offset < end:
        if end - offset < _ELEMENT_HEADER.size:
            return None
        group, element, length = _ELEMENT_HEADER.unpack_from(command, offset)
        offset += _ELEMENT_HEADER.size
        if group != 0x0000 or element not in _STORE_REQUEST_ELEMENTS or element in values or offset + length > end:
            return None
        if element in _US_ELEMENTS and length != 2:
            return None
        values[element] = command[offset:offset + length]
        offset += length
    if not {0x0002, 0x0100, 0x0110, 0x0800, 0x1000} <= values.keys():
        return None
    number = {element: int.from_bytes(values[element], "little") for element in _US_ELEMENTS if element in values}
    if number[0x0100] != _C_STORE_RQ or number[0x0800] == _NO_DATA_SET:
        return None
    primitive = C_STORE()
    primitive.MessageID = number[0x0110]
    primitive.AffectedSOPClassUID = _uid(values[0x0002])
    primitive.AffectedSOPInstanceUID = _uid(values[0x1000])
    if 0x0700 in number:
        primitive.Priority = number[0x0700]
    return primitive


def _uid(value: bytes) -> str:
    return value.rstrip(b"\0 ").decode("ascii")


class _StoreInProgress:
    __slots__ = ("context_id", "primitive", "data_set")

    def __init__(self, context_id: int, primitive: C_STORE) -> None:
        self.context_id = context_id
        self.primitive = primitive
        self.data_set = BytesIO()


class ShortcutDimse(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider with the C-STORE shortcuts (set up by ``dicom_node.scp.reactor``)."""

    _store: _StoreInProgress | None = None

    def _observed(self, event) -> bool:
        return bool(self.assoc.get_handlers(event))

    def receive_primitive(self, primitive: P_DATA) -> None:
        values = primitive.presentation_data_value_list
        if self._store is None:
            if self.message is not None or not values or _config.STORE_RECV_CHUNKED_DATASET:
                return super().receive_primitive(primitive)
            context_id, first = values[0]
            if first[0] & 0x03 != _COMMAND | _LAST or self._observed(evt.EVT_DIMSE_RECV):
                return super().receive_primitive(primitive)
            try:
                request = decode_store_request(first[1:])
            except Exception:  # noqa: BLE001 - an invalid value: let pynetdicom decode and report it its own way
                request = None
            if request is None:
                return super().receive_primitive(primitive)
            self._store = _StoreInProgress(context_id, request)
            values = values[1:]
        for _context_id, fragment in values:
            if fragment[0] & _COMMAND:  # a command before this data set ended: not a conformant peer
                self._store = None
                self.dul.event_queue.put("Evt19")  # what pynetdicom does with an undecodable message
                return None
            self._store.data_set.write(fragment[1:])
            if fragment[0] & _LAST:
                self._deliver()
        return None

    def _deliver(self) -> None:
        store, self._store = self._store, None
        request = store.primitive
        request.DataSet = store.data_set
        request._context_id = store.context_id
        request._dataset_path = None
        request._dataset_file = None
        self.msg_queue.put((store.context_id, request))

    def send_msg(self, primitive, context_id: int) -> None:
        command = None if self._observed(evt.EVT_DIMSE_SENT) else encode_store_response(primitive)
        max_pdu = self.maximum_pdu_size
        if command is None or (max_pdu and len(command) + 7 > max_pdu):
            return super().send_msg(primitive, context_id)
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))  # the last command fragment
        self.dul.send_pdu(pdata)
        return None
