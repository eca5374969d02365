"""The one intake both ways in use (C-STORE and STOW-RS): limits, header, admission by disk, the durable step, record.

See ``dicom_node.intake.intake`` for the order of the steps.
"""

from dicom_node.intake.admission import DiskAdmission, DiskUsage
from dicom_node.intake.header import FileMeta, InstanceHeader, MissingAttribute, UnreadableDataset, read_file_meta
from dicom_node.intake.intake import (
    DataSetInMemory,
    DataSetInSpool,
    DurableStore,
    Intake,
    IntakeSession,
    SpoolAndRecorder,
    StoredInstance,
    transfer_syntax_of,
)
from dicom_node.intake.limits import InstanceTooLarge, IntakeLimits
from dicom_node.intake.recording import InstanceRecorder, ReceivedInstance, RecorderError
from dicom_node.intake.spool import (
    InstanceLocation,
    PendingFile,
    SpooledFile,
    SpoolError,
    SpoolFull,
    SpoolWriter,
    StoreOutcome,
)

__all__ = [
    "DataSetInMemory", "DataSetInSpool", "DiskAdmission", "DiskUsage", "DurableStore", "FileMeta", "InstanceHeader",
    "InstanceLocation", "InstanceRecorder", "InstanceTooLarge", "Intake", "IntakeLimits", "IntakeSession",
    "MissingAttribute", "PendingFile", "ReceivedInstance", "RecorderError", "SpoolAndRecorder", "SpoolError",
    "SpoolFull", "SpoolWriter", "SpooledFile", "StoreOutcome", "StoredInstance", "UnreadableDataset",
    "read_file_meta", "transfer_syntax_of",
]
