"""The result objects m3edge produced (draft SR, SEG, overlay, verified SR, rejection note) as DICOMweb instances.

They belong to the studies the node received, so QIDO-RS lists them beside the received series and WADO-RS returns
them; which exist comes from ``reports.objects``, their series and attributes from their own headers (read once,
cached). A listed file outside ``HOME/results`` is never served (``ReportObjectCatalog`` leaves it out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.qr import ObjectHeaders
from dicom_node.qr.matching import element_matches
from service.dicomweb.query_retrieve import ReportObjectCatalog
from service.dicomweb.wado import StoredFile

__all__ = ["ResultInstance", "ResultInstances", "RESULT_MATCHED_KEYS"]

# QIDO keys matched on a result's own attributes (study-level keys are matched on its study, in SQL).
RESULT_MATCHED_KEYS = {
    "SeriesInstanceUID": ("series_uid", "UI"), "Modality": ("modality", "CS"), "SeriesNumber": ("series_number", "IS"),
    "SeriesDescription": ("series_description", "LO"), "BodyPartExamined": ("body_part_examined", "CS"),
    "SOPInstanceUID": ("sop_instance_uid", "UI"), "SOPClassUID": ("sop_class_uid", "UI"),
}


@dataclass(frozen=True)
class ResultInstance:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    series_number: str
    series_description: str
    body_part_examined: str
    path: Path

    def matches(self, filters: dict[str, list[str]]) -> bool:
        for keyword, values in filters.items():
            if keyword in RESULT_MATCHED_KEYS:
                attribute, vr = RESULT_MATCHED_KEYS[keyword]
                if not element_matches(vr, values, [getattr(self, attribute)]):
                    return False
        return True


def _text(header, keyword: str) -> str:
    value = header.get(keyword)
    return "" if value is None else str(value).strip()


class ResultInstances:
    """Reads which result objects exist and their headers; thread-safe, one per app (its header cache is shared)."""

    def __init__(self, session_factory: sessionmaker[Session], results_dir: Path) -> None:
        self._catalog = ReportObjectCatalog(session_factory, results_dir)  # which keeps to results_dir
        self._headers = ObjectHeaders()

    def of_studies(self, study_uids: Sequence[str] | None, filters: dict[str, list[str]] | None = None
                   ) -> list[ResultInstance]:
        """The result instances of ``study_uids`` (all when ``None``) matching ``filters``, in a stable order."""
        if study_uids is not None and not study_uids:
            return []
        found = []
        for obj in self._headers.index(self._catalog.held_objects(study_uids)):
            header = obj.header
            meta = getattr(header, "file_meta", None)
            instance = ResultInstance(
                study_uid=obj.held.study_uid, series_uid=obj.series_uid, sop_instance_uid=obj.held.sop_instance_uid,
                sop_class_uid=obj.held.sop_class_uid,
                transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
                modality=_text(header, "Modality"), series_number=_text(header, "SeriesNumber"),
                series_description=_text(header, "SeriesDescription"), body_part_examined="", path=obj.held.path,
            )
            if instance.series_uid and instance.matches(filters or {}):
                found.append(instance)
        return sorted(found, key=lambda r: (r.study_uid, r.series_uid, r.sop_instance_uid))

    def files(self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
              ) -> list[StoredFile]:
        """The result files under a WADO-RS URL."""
        filters = {}
        if series_uid is not None:
            filters["SeriesInstanceUID"] = [series_uid]
        if sop_instance_uid is not None:
            filters["SOPInstanceUID"] = [sop_instance_uid]
        return [StoredFile(r.study_uid, r.series_uid, r.sop_instance_uid, r.transfer_syntax_uid, r.path)
                for r in self.of_studies([study_uid], filters)]
