"""The Study Root information model over the held objects: C-FIND answers and the objects a C-GET/C-MOVE names.

Studies, series and instances are built from the objects' own headers; ``ModalitiesInStudy`` and the ``Number of ...
Related ...`` attributes are computed. Matching is lenient about hierarchy: any key at or above the query level filters.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicom_node.qr.holdings import IndexedObject
from dicom_node.qr.matching import element_matches, element_values, query_values

__all__ = ["QueryLevel", "IdentifierError", "find_matches", "objects_to_retrieve", "requested_study_uids"]

STUDY_KEYS = (
    "StudyDate", "StudyTime", "AccessionNumber", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyID", "StudyDescription", "ReferringPhysicianName",
)
SERIES_KEYS = ("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription")
IMAGE_KEYS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber", "ContentDate", "ContentTime")
_NOT_MATCHED = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "TimezoneOffsetFromUTC"}


class QueryLevel(str, enum.Enum):
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class IdentifierError(ValueError):
    """The request's identifier cannot be answered (missing or bad Query/Retrieve Level or unique key)."""


@dataclass
class _Entity:
    """One study, series or instance: its attribute elements (for matching and answering) and its objects."""

    elements: dict[str, DataElement] = field(default_factory=dict)
    objects: list[IndexedObject] = field(default_factory=list)
    character_set: DataElement | None = None


def _level(identifier: Dataset) -> QueryLevel:
    text = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    try:
        return QueryLevel(text)
    except ValueError:
        raise IdentifierError(f"Query/Retrieve Level {text!r} is not supported; use STUDY, SERIES or IMAGE") from None


def _computed(keyword: str, value) -> DataElement:
    tag = {"ModalitiesInStudy": 0x00080061, "NumberOfStudyRelatedSeries": 0x00201206,
           "NumberOfStudyRelatedInstances": 0x00201208, "NumberOfSeriesRelatedInstances": 0x00201209}[keyword]
    return DataElement(tag, dictionary_VR(tag), value)


def _copy_keys(header: Dataset, keywords: Sequence[str], into: dict[str, DataElement]) -> None:
    for keyword in keywords:
        if keyword in header:
            into[keyword] = header[keyword]


def _entities(objects: Sequence[IndexedObject], level: QueryLevel) -> list[_Entity]:
    studies: dict[str, dict[str, list[IndexedObject]]] = {}
    for obj in objects:
        studies.setdefault(obj.held.study_uid, {}).setdefault(obj.series_uid, []).append(obj)
    entities = []
    for study_uid in sorted(studies):
        series = studies[study_uid]
        first = next(iter(series.values()))[0]
        study = _Entity(character_set=first.header.get((0x0008, 0x0005)))
        _copy_keys(first.header, STUDY_KEYS, study.elements)
        modalities = sorted({str(o[0].header.get("Modality", "")) for o in series.values()} - {""})
        study.elements["ModalitiesInStudy"] = _computed("ModalitiesInStudy", modalities)
        study.elements["NumberOfStudyRelatedSeries"] = _computed("NumberOfStudyRelatedSeries", len(series))
        study.elements["NumberOfStudyRelatedInstances"] = _computed(
            "NumberOfStudyRelatedInstances", sum(len(v) for v in series.values())
        )
        study.objects = [o for members in series.values() for o in members]
        if level is QueryLevel.STUDY:
            entities.append(study)
            continue
        for series_uid in sorted(series):
            members = series[series_uid]
            one = _Entity(dict(study.elements), character_set=study.character_set)
            _copy_keys(members[0].header, SERIES_KEYS, one.elements)
            one.elements["NumberOfSeriesRelatedInstances"] = _computed("NumberOfSeriesRelatedInstances", len(members))
            one.objects = list(members)
            if level is QueryLevel.SERIES:
                entities.append(one)
                continue
            for obj in sorted(members, key=lambda o: o.held.sop_instance_uid):
                image = _Entity(dict(one.elements), [obj], character_set=obj.header.get((0x0008, 0x0005)))
                _copy_keys(obj.header, IMAGE_KEYS, image.elements)
                entities.append(image)
    return entities


def _values(element: DataElement) -> list[str]:
    return element_values(element) if element.VR != "SQ" else []


def _matches(entity: _Entity, identifier: Dataset) -> bool:
    for element in identifier:
        keyword = element.keyword or keyword_for_tag(element.tag)
        if keyword in _NOT_MATCHED or element.VR == "SQ":
            continue
        queries = query_values(element)
        if not queries:
            continue
        held = entity.elements.get(keyword)
        if held is None:
            return False  # a key with a value we do not hold cannot match
        if not element_matches(element.VR, queries, _values(held)):
            return False
    return True


def _answer(entity: _Entity, identifier: Dataset, level: QueryLevel, retrieve_ae: str) -> Dataset:
    answer = Dataset()
    for element in identifier:
        keyword = element.keyword
        held = entity.elements.get(keyword)
        if held is not None and element.VR != "SQ":
            answer[element.tag] = deepcopy(held)
        else:
            answer.add_new(element.tag, element.VR, None)
    answer.QueryRetrieveLevel = level.value
    if entity.character_set is not None:
        answer.SpecificCharacterSet = entity.character_set.value
    if "RetrieveAETitle" in identifier:
        answer.RetrieveAETitle = retrieve_ae
    return answer


def requested_study_uids(identifier: Dataset) -> list[str] | None:
    """The Study Instance UIDs the identifier names, or ``None`` when it names none (all studies)."""
    element = identifier.get((0x0020, 0x000D))
    if element is None:
        return None
    values = query_values(element)
    if not values or any("*" in v or "?" in v for v in values):
        return None
    return values


def find_matches(objects: Sequence[IndexedObject], identifier: Dataset, retrieve_ae: str) -> Iterator[Dataset]:
    """The C-FIND answers to ``identifier`` (Study Root, STUDY, SERIES or IMAGE level)."""
    level = _level(identifier)
    for entity in _entities(objects, level):
        if _matches(entity, identifier):
            yield _answer(entity, identifier, level, retrieve_ae)


def objects_to_retrieve(objects: Sequence[IndexedObject], identifier: Dataset) -> list[IndexedObject]:
    """The objects a C-GET or C-MOVE identifier names; its level's unique key must be given (a list is allowed)."""
    level = _level(identifier)
    unique = {QueryLevel.STUDY: "StudyInstanceUID", QueryLevel.SERIES: "SeriesInstanceUID",
              QueryLevel.IMAGE: "SOPInstanceUID"}[level]
    if unique not in identifier or not query_values(identifier[unique]):
        raise IdentifierError(f"a {level.value} level retrieve needs {unique}")
    chosen = []
    for entity in _entities(objects, level):
        if _matches(entity, identifier):
            chosen.extend(entity.objects)
    return chosen
