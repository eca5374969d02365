"""The DICOM JSON Model (PS3.18 F.2) for what the catalogue holds, and for the headers of stored files."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

__all__ = ["attribute", "header_json", "BULK_VRS"]

BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_INLINE_LIMIT = 1024  # binary values up to this many bytes are sent inline (InlineBinary); larger ones are left out


def attribute(vr: str, *values) -> dict:
    """One DICOM JSON attribute; empty values (None, "") are left out, and no values at all gives a present-but-empty
    attribute."""
    kept = [v for v in values if v is not None and v != ""]
    if vr == "PN":
        kept = [{"Alphabetic": str(v)} for v in kept]
    return {"vr": vr, "Value": kept} if kept else {"vr": vr}


def _drop_bulk(dataset: Dataset) -> None:
    for element in list(dataset):
        if element.VR == "SQ":
            for item in element.value or []:
                _drop_bulk(item)
        elif element.VR in BULK_VRS and element.value is not None and len(element.value) > _INLINE_LIMIT:
            del dataset[element.tag]


def header_json(path: Path) -> dict:
    """The metadata of one stored instance: every attribute but pixel data and other bulk data over 1 KiB."""
    dataset = dcmread(path, stop_before_pixels=True)
    _drop_bulk(dataset)
    return dataset.to_json_dict()
