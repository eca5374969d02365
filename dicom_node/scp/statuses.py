"""The C-STORE statuses the node answers, by name (PS3.4 B.2.3, PS3.7 C), and the one table mapping errors to them."""

from __future__ import annotations

from dicom_node.scp.header import MissingAttribute, UnreadableDataset
from dicom_node.scp.recording import RecorderError
from dicom_node.scp.spool import SpoolError, SpoolFull
from dicom_node.uids import InvalidUid

__all__ = [
    "SUCCESS", "WARNING_CONFLICTING_DUPLICATE", "OUT_OF_RESOURCES", "DATA_SET_DOES_NOT_MATCH_SOP_CLASS",
    "CANNOT_UNDERSTAND", "INVALID_UID", "PROCESSING_FAILURE", "status_for_error",
]

SUCCESS = 0x0000
# A second, different data set under an SOP Instance UID we already hold: both are kept, the new one is flagged.
# PS3.7 C.1.3 allows a warning as 0001H or Bxxx. The Storage warnings B000 (coercion), B006 (elements discarded) and
# B007 (does not match SOP class) would each tell the sender something false about what we did to its data, so the
# node answers the generic warning 0001H and says what happened in Error Comment.
WARNING_CONFLICTING_DUPLICATE = 0x0001
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (the spool's disk is full)
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # a Type 1 UID the node needs is missing
CANNOT_UNDERSTAND = 0xC210  # Error: Cannot understand (C000-CFFF): the data set does not parse
INVALID_UID = 0xC220  # Error: Cannot understand: a UID attribute holds something that is not a UID
PROCESSING_FAILURE = 0x0110  # I/O error other than a full disk, database unavailable, anything unexpected

# Order matters: subclasses before their bases.
_STATUS_FOR_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (SpoolFull, OUT_OF_RESOURCES),
    (SpoolError, PROCESSING_FAILURE),
    (UnreadableDataset, CANNOT_UNDERSTAND),
    (MissingAttribute, DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    (InvalidUid, INVALID_UID),
    (RecorderError, PROCESSING_FAILURE),
)

KNOWN_ERRORS: tuple[type[BaseException], ...] = tuple(error for error, _ in _STATUS_FOR_ERROR)


def status_for_error(error: BaseException) -> int:
    for error_type, status in _STATUS_FOR_ERROR:
        if isinstance(error, error_type):
            return status
    return PROCESSING_FAILURE


__all__ += ["KNOWN_ERRORS"]
