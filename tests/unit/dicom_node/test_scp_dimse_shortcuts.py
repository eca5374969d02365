"""The C-STORE shortcuts through pynetdicom's DIMSE layer give exactly what pynetdicom's own way gives."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode, encode

from dicom_node.scp.dimse_shortcuts import decode_store_request, encode_store_response

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_a_plain_store_response_is_encoded_byte_for_byte_as_pynetdicom_encodes_it():
    cases = [
        (0x0000, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", 7),  # odd-length UID: padded
        (0xB007, "1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", 65535),
        (0xA700, None, None, 1),  # no UIDs at all
    ]
    for status, sop_class, sop_instance, message_id in cases:
        primitive = C_STORE()
        primitive.MessageIDBeingRespondedTo = message_id
        primitive.Status = status
        if sop_class:
            primitive.AffectedSOPClassUID = sop_class
            primitive.AffectedSOPInstanceUID = sop_instance
        message = C_STORE_RSP()
        message.primitive_to_message(primitive)
        assert encode_store_response(primitive) == encode(message.command_set, True, True)


def test_responses_with_status_details_and_requests_take_pynetdicoms_way():
    with_comment = C_STORE()
    with_comment.MessageIDBeingRespondedTo = 3
    with_comment.Status = 0xB007
    with_comment.ErrorComment = "kept both"
    request = C_STORE()
    request.MessageID = 3
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 3
    echo.Status = 0
    assert [encode_store_response(p) for p in (with_comment, request, echo)] == [None, None, None]


def _request_command(**attributes) -> tuple[bytes, C_STORE]:
    primitive = C_STORE()
    primitive.MessageID = 12
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = "1.2.3.4.567"
    primitive.DataSet = BytesIO(b"data")
    for name, value in attributes.items():
        setattr(primitive, name, value)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True), message


@pytest.mark.parametrize("priority", [0, 1, 2])
def test_a_plain_store_request_decodes_to_the_primitive_pynetdicom_builds(priority):
    command, message = _request_command(Priority=priority)
    ours = decode_store_request(command)
    theirs = message.message_to_primitive()
    names = ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
             "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID")
    assert [getattr(ours, n) for n in names] == [getattr(theirs, n) for n in names]


def test_other_requests_are_left_to_pynetdicom():
    with_originator, _ = _request_command(MoveOriginatorApplicationEntityTitle="MOVER", MoveOriginatorMessageID=3)
    plain, _ = _request_command()
    truncated = plain[:-3]
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    from pynetdicom.dimse_messages import C_ECHO_RQ

    echo_message = C_ECHO_RQ()
    echo_message.primitive_to_message(echo)
    echo_command = encode(echo_message.command_set, True, True)
    assert [decode_store_request(c) for c in (with_originator, truncated, echo_command)] == [None, None, None]


def test_a_non_conformant_uid_is_kept_as_pynetdicom_keeps_it():
    """pynetdicom warns and keeps it; the node's handler then refuses the instance with its own typed error."""
    command, message = _request_command()
    broken = command.replace(b"1.2.3.4.567", b"1.2.3.4.x67")
    message.command_set = decode(BytesIO(broken), True, True)
    assert decode_store_request(broken).AffectedSOPInstanceUID == message.message_to_primitive().AffectedSOPInstanceUID
