"""The DICOM JSON Model (PS3.18 F.2) for what the catalogue holds (stored files: ``dicom_node.dicomweb``)."""

from __future__ import annotations

__all__ = ["attribute"]


def attribute(vr: str, *values) -> dict:
    """One DICOM JSON attribute; empty values (None, "") are left out, and no values at all gives a present-but-empty
    attribute."""
    kept = [v for v in values if v is not None and v != ""]
    if vr == "PN":
        kept = [{"Alphabetic": str(v)} for v in kept]
    return {"vr": vr, "Value": kept} if kept else {"vr": vr}
