"""The network side of the DICOM node: Verification, Storage and Query/Retrieve SCP on pynetdicom's public API, the
guarded connections, who may associate, and the receiving processes. What happens to a received instance is the
intake's (``dicom_node.intake``)."""

from dicom_node.scp.access import AccessPolicy, AccessRefusal
from dicom_node.scp.node import DicomNode, NodeNotRunning, NodeSettings

__all__ = ["AccessPolicy", "AccessRefusal", "DicomNode", "NodeNotRunning", "NodeSettings"]
