"""What the Query/Retrieve SCP can answer about: the objects the service tells it it holds, with their headers.

``dicom_node`` never imports the service: the service passes an ``ObjectCatalog`` (which objects exist, where) and the
SCP reads each file's header once (cached by path, size and modification time; result files never change in place).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydicom import dcmread
from pydicom.dataset import Dataset

__all__ = ["HeldObject", "ObjectCatalog", "IndexedObject", "ObjectHeaders", "HEADER_KEYWORDS"]

LOGGER = logging.getLogger(__name__)

# The attributes C-FIND can match on and answer with (study, series and instance level).
HEADER_KEYWORDS = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "Modality",
    "ReferringPhysicianName", "StudyDescription", "SeriesDescription", "PatientName", "PatientID", "PatientBirthDate",
    "PatientSex", "StudyInstanceUID", "SeriesInstanceUID", "StudyID", "SeriesNumber", "InstanceNumber",
    "ContentDate", "ContentTime",
)


@dataclass(frozen=True)
class HeldObject:
    """One object the node may return: which study it belongs to, its SOP instance and class, and its file."""

    study_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path


@runtime_checkable
class ObjectCatalog(Protocol):
    """Where the SCP learns what it holds (the service's database). May be called from many threads at once."""

    def held_objects(self, study_uids: Sequence[str] | None = None) -> list[HeldObject]:
        """Every object held, or only those of ``study_uids``; objects whose file is gone are left out."""


@dataclass(frozen=True)
class IndexedObject:
    """A held object with the header attributes C-FIND needs (no pixel data)."""

    held: HeldObject
    header: Dataset

    @property
    def series_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", ""))


class ObjectHeaders:
    """Reads and caches the headers of held objects; unreadable files are logged and left out, never raised."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._cache: dict[Path, tuple[tuple[int, int], Dataset]] = {}
        self._lock = threading.Lock()
        self._max_entries = max_entries

    def index(self, objects: Sequence[HeldObject]) -> list[IndexedObject]:
        indexed = []
        for held in objects:
            header = self._header(held.path)
            if header is not None and str(header.get("SOPInstanceUID", "")) == held.sop_instance_uid:
                indexed.append(IndexedObject(held, header))
            elif header is not None:
                LOGGER.warning("%s does not hold SOP Instance %s; left out of Query/Retrieve", held.path,
                               held.sop_instance_uid)
        return indexed

    def _header(self, path: Path) -> Dataset | None:
        try:
            stat = os.stat(path)
        except OSError:
            return None
        key = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            header = dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a corrupt file; all mean "skip it"
            LOGGER.warning("cannot read the header of %s (%s); left out of Query/Retrieve", path,
                           exc.__class__.__name__)
            return None
        with self._lock:
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            self._cache[path] = (key, header)
        return header
