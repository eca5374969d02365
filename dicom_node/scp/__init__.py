"""The receiving side of the DICOM node: Verification and Storage SCP, the durable spool, access and admission."""

from dicom_node.scp.access import AccessPolicy, AccessRefusal
from dicom_node.scp.admission import DiskAdmission, DiskUsage
from dicom_node.scp.node import DicomNode, NodeNotRunning, NodeSettings
from dicom_node.scp.recording import InstanceRecorder, ReceivedInstance, RecorderError
from dicom_node.scp.spool import InstanceLocation, SpooledFile, SpoolError, SpoolFull, SpoolWriter, StoreOutcome

__all__ = [
    "AccessPolicy",
    "AccessRefusal",
    "DicomNode",
    "DiskAdmission",
    "DiskUsage",
    "InstanceLocation",
    "InstanceRecorder",
    "NodeNotRunning",
    "NodeSettings",
    "ReceivedInstance",
    "RecorderError",
    "SpoolError",
    "SpoolFull",
    "SpoolWriter",
    "SpooledFile",
    "StoreOutcome",
]
