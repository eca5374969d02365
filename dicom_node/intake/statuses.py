"""The C-STORE statuses the intake answers, by name (PS3.4 B.2.3, PS3.7 C), and the one table mapping errors to them.

STOW-RS answers the same codes as each failed instance's Failure Reason (PS3.18 10.5.3).
"""

from __future__ import annotations

from dicom_node.intake.header import MissingAttribute, UnreadableDataset
from dicom_node.intake.limits import InstanceTooLarge
from dicom_node.intake.recording import RecorderError
from dicom_node.intake.spool import SpoolError, SpoolFull
from dicom_node.uids import InvalidUid

__all__ = [
    "SUCCESS", "WARNING_CONFLICTING_DUPLICATE", "OUT_OF_RESOURCES", "DATA_SET_DOES_NOT_MATCH_SOP_CLASS",
    "CANNOT_UNDERSTAND", "INVALID_UID", "PROCESSING_FAILURE", "status_for_error", "KNOWN_ERRORS", "DataSetMismatch",
    "TransferSyntaxNotSupported", "TRANSFER_SYNTAX_NOT_SUPPORTED", "CONFLICTING_DUPLICATE_COMMENT",
]

SUCCESS = 0x0000
# A second, different data set under an SOP Instance UID we already hold: both are kept, the new one is flagged.
# PS3.4 Annex B lists three C-STORE warnings, B000 (coercion of data elements), B006 (elements discarded) and B007
# (data set does not match SOP class); an SCU that meets a status it does not know (0001H: dcmtk prints "Unknown
# Status: 0x1") may count it as a failure and send the instance again forever. B000 is the one whose meaning is
# closest to "stored, but not as one more plain copy"; the Error Comment says exactly what happened.
WARNING_CONFLICTING_DUPLICATE = 0xB000
CONFLICTING_DUPLICATE_COMMENT = "SOP Instance UID held with other content: kept both"
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (the spool's disk is full, or the instance is over a limit)
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # a Type 1 UID the node needs is missing, or contradicts the file meta
CANNOT_UNDERSTAND = 0xC210  # Error: Cannot understand (C000-CFFF): the data set does not parse
INVALID_UID = 0xC220  # Error: Cannot understand: a UID attribute holds something that is not a UID
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122  # STOW-RS: a part in a transfer syntax the node does not know
PROCESSING_FAILURE = 0x0110  # I/O error other than a full disk, database unavailable, anything unexpected


class DataSetMismatch(ValueError):
    """The data set says something else than what came with it (a STOW-RS part's File Meta, the study in the URL)."""


class TransferSyntaxNotSupported(ValueError):
    """A STOW-RS part names a transfer syntax the node does not read."""


# Order matters: subclasses before their bases.
_STATUS_FOR_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (SpoolFull, OUT_OF_RESOURCES),
    (SpoolError, PROCESSING_FAILURE),
    (InstanceTooLarge, OUT_OF_RESOURCES),
    (UnreadableDataset, CANNOT_UNDERSTAND),
    (MissingAttribute, DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    (DataSetMismatch, DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    (TransferSyntaxNotSupported, TRANSFER_SYNTAX_NOT_SUPPORTED),
    (InvalidUid, INVALID_UID),
    (RecorderError, PROCESSING_FAILURE),
)

KNOWN_ERRORS: tuple[type[BaseException], ...] = tuple(error for error, _ in _STATUS_FOR_ERROR)


def status_for_error(error: BaseException) -> int:
    for error_type, status in _STATUS_FOR_ERROR:
        if isinstance(error, error_type):
            return status
    return PROCESSING_FAILURE
