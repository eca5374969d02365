"""Result objects: the draft SR (TID 1500), SEG, overlay Secondary Capture, verified SR and IOCM retraction, each
built by highdicom's constructors (with their validation); write them with pydicom's public writer
(``dataset.save_as(path, enforce_file_format=True)``)."""

from dicom_node.results.codes import LOCAL_SCHEME, StructureCoding, pathology_code, procedure_code, structure_coding
from dicom_node.results.content import (
    POSITIVE_SCORE_THRESHOLD,
    AlgorithmIdentity,
    Amendment,
    FindingCorrection,
    DraftReportContent,
    ExpertFindings,
    LabelSegmentation,
    Narrative,
    PathologyScore,
    StructureSegment,
    VerifyingObserver,
)
from dicom_node.results.equipment import PROCESSING_EQUIPMENT, WRITER_MANUFACTURER, algorithm_equipment
from dicom_node.results.retraction import RejectionReason, build_retraction
from dicom_node.results.secondary_capture import AXIAL_DISPLAY_ORIENTATION, build_overlay_capture
from dicom_node.compression import SegCompression
from dicom_node.results.seg import build_segmentation, frames_on_source_grid
from dicom_node.results.sr import COMPREHENSIVE_3D_SR, build_draft_report, build_verified_report
from dicom_node.results.text import clean_line, clean_text
from dicom_node.results.uids import OrganisationRoot, ResultKind, ResultUids, SeriesNumber

__all__ = [
    "AXIAL_DISPLAY_ORIENTATION",
    "COMPREHENSIVE_3D_SR",
    "LOCAL_SCHEME",
    "POSITIVE_SCORE_THRESHOLD",
    "PROCESSING_EQUIPMENT",
    "WRITER_MANUFACTURER",
    "AlgorithmIdentity",
    "Amendment",
    "FindingCorrection",
    "DraftReportContent",
    "ExpertFindings",
    "LabelSegmentation",
    "Narrative",
    "OrganisationRoot",
    "PathologyScore",
    "RejectionReason",
    "ResultKind",
    "ResultUids",
    "SegCompression",
    "SeriesNumber",
    "StructureCoding",
    "StructureSegment",
    "VerifyingObserver",
    "algorithm_equipment",
    "build_draft_report",
    "build_overlay_capture",
    "build_retraction",
    "build_segmentation",
    "build_verified_report",
    "clean_line",
    "clean_text",
    "frames_on_source_grid",
    "pathology_code",
    "procedure_code",
    "structure_coding",
]
