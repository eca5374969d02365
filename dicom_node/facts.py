"""The attributes routing decisions are made on, read from the headers of a stored study (no pixel data)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

__all__ = ["SeriesFacts", "StudyFacts", "ROUTING_ATTRIBUTES", "facts_from_files"]

# Attributes a routing rule may test. Patient attributes are deliberately absent.
ROUTING_ATTRIBUTES: tuple[str, ...] = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "SeriesDescription",
    "StudyDescription",
    "SOPClassUID",
    "ImageType",
    "ProtocolName",
    "Manufacturer",
)


@dataclass(frozen=True)
class SeriesFacts:
    series_uid: str
    instance_count: int
    attributes: dict[str, str]  # attribute keyword -> value; multi-valued attributes joined with "\\"; absent = missing


@dataclass(frozen=True)
class StudyFacts:
    study_uid: str
    attributes: dict[str, str]
    series: tuple[SeriesFacts, ...] = field(default_factory=tuple)


def _text(value) -> str:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def facts_from_files(study_uid: str, series_files: dict[str, Iterable[Path]]) -> StudyFacts:
    """Facts from one header per series (its first file) plus instance counts.

    ``series_files`` maps Series Instance UID -> the files of that series. Only the attributes in
    ``ROUTING_ATTRIBUTES`` are read; an attribute that is absent or empty stays absent (rules decide what that means).
    """
    study_attributes: dict[str, str] = {}
    series: list[SeriesFacts] = []
    for series_uid, files in sorted(series_files.items()):
        files = sorted(files)
        if not files:
            continue
        header = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=list(ROUTING_ATTRIBUTES))
        attributes = {}
        for keyword in ROUTING_ATTRIBUTES:
            value = header.get(keyword)
            if value is not None and _text(value):
                attributes[keyword] = _text(value)
        if "StudyDescription" in attributes:
            study_attributes.setdefault("StudyDescription", attributes["StudyDescription"])
        series.append(SeriesFacts(series_uid, len(files), attributes))
    return StudyFacts(study_uid, study_attributes, tuple(series))
