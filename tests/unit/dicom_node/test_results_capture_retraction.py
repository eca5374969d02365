"""Overlay Secondary Capture and the IOCM rejection note, read back from bytes."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom
import pytest

from dicom_node.results import (
    RejectionReason,
    VerifyingObserver,
    build_draft_report,
    build_overlay_capture,
    build_retraction,
    build_segmentation,
)
from tests.support.result_cases import FIXED_TIME, ct_case, cxr_case

READER = VerifyingObserver("Reader^Rita", "Test Hospital Radiology")


def _roundtrip(dataset) -> pydicom.Dataset:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def test_overlay_capture_keeps_the_rgb_pixels_and_references_its_slice():
    case = ct_case()
    source = case.study.series["ct"][3]
    overlay = np.random.default_rng(3).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    capture = _roundtrip(build_overlay_capture(overlay, source, case.content.findings.algorithm, case.uids,
                                               now=FIXED_TIME))
    np.testing.assert_array_equal(capture.pixel_array, overlay)
    assert capture.PhotometricInterpretation == "RGB" and capture.SeriesNumber == 9903
    assert capture.StudyInstanceUID == source.StudyInstanceUID and capture.PatientID == source.PatientID
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert list(capture.PatientOrientation) == ["L", "P"]
    assert "DRAFT" in capture.ImageComments and "DEMO" in capture.SeriesDescription


@pytest.mark.parametrize(
    ("overlay", "error", "message"),
    [(np.zeros((4, 4), np.uint8), ValueError, "rows, columns, 3"), (np.zeros((4, 4, 3), float), TypeError, "uint8")],
)
def test_overlay_capture_refuses_anything_but_rgb_uint8(overlay, error, message):
    case = ct_case()
    with pytest.raises(error, match=message):
        build_overlay_capture(overlay, case.study.series["ct"][0], case.content.findings.algorithm, case.uids)


def test_retraction_is_an_iocm_rejection_note_referencing_the_draft_and_seg():
    case = ct_case()
    seg = build_segmentation(case.content.findings, case.uids, now=FIXED_TIME)
    draft = build_draft_report(case.content, case.uids, segmentation=seg, now=FIXED_TIME)
    note = _roundtrip(build_retraction([draft, seg], READER, case.uids, explanation="Wrong series — Größe ≥ 2", now=FIXED_TIME))
    assert note.Modality == "KO" and note.SeriesNumber == 9905
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001"  # Rejected for Quality Reasons
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == {draft.SOPInstanceUID, seg.SOPInstanceUID}
    texts = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in note.ContentSequence}
    assert texts["Key Object Description"].TextValue == "Wrong series — Größe ≥ 2"
    assert str(texts["Person Observer Name"].PersonName) == READER.name
    assert note.StudyDescription == case.study.series["ct"][0].StudyDescription


def test_retraction_for_patient_safety_and_its_checks():
    case = cxr_case()
    draft = build_draft_report(case.content, case.uids, now=FIXED_TIME)
    note = build_retraction([draft], READER, case.uids, reason="patient-safety")
    assert note.ConceptNameCodeSequence[0].CodeValue == "113037"
    with pytest.raises(ValueError, match="not a valid RejectionReason"):
        build_retraction([draft], READER, case.uids, reason="boring")
    with pytest.raises(ValueError, match="rejected must list"):
        build_retraction([], READER, case.uids)
    with pytest.raises(TypeError, match="reviewer"):
        build_retraction([draft], "Reader^Rita", case.uids)
    assert RejectionReason("quality").title.meaning == "Rejected for Quality Reasons"


def test_every_object_of_a_demo_run_says_demo_even_when_its_own_expert_had_real_weights():
    case = ct_case(demo=False)  # real expert weights; the run's VLM was DEMO
    findings, source = case.content.findings, case.study.series["ct"][3]
    overlay = np.zeros((24, 20, 3), dtype=np.uint8)
    real = [build_segmentation(findings, case.uids, now=FIXED_TIME),
            build_overlay_capture(overlay, source, findings.algorithm, case.uids, now=FIXED_TIME)]
    assert not any("DEMO" in str(d.SeriesDescription) for d in real) and real[0].ContentLabel == "AI_DRAFT"
    seg = _roundtrip(build_segmentation(findings, case.uids, now=FIXED_TIME, demo_run=True))
    capture = _roundtrip(build_overlay_capture(overlay, source, findings.algorithm, case.uids, now=FIXED_TIME,
                                               demo_run=True))
    assert "DEMO" in seg.SeriesDescription and "DEMO" in seg.ContentDescription and seg.ContentLabel == "AI_DRAFT_DEMO"
    assert "DEMO" in capture.SeriesDescription and capture.ImageComments.startswith("DEMO")
    draft = build_draft_report(ct_case(demo=True).content, case.uids, segmentation=seg, now=FIXED_TIME)
    note = _roundtrip(build_retraction([draft, seg], READER, case.uids, explanation="Random weights", demo=True,
                                       now=FIXED_TIME))
    assert note.SeriesDescription.endswith("DEMO")
    texts = [str(i.TextValue) for i in note.ContentSequence if i.ValueType == "TEXT"]
    assert "DEMO draft: Random weights" in texts
