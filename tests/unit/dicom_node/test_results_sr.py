"""The draft SR and the verified SR that replaces it, read back from bytes and checked item by item."""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.results import (
    Amendment,
    DraftReportContent,
    ExpertFindings,
    LabelSegmentation,
    Narrative,
    StructureSegment,
    VerifyingObserver,
    build_draft_report,
    build_segmentation,
    build_verified_report,
    procedure_code,
)
from dicom_node.results.report_content import DEMO_NARRATIVE_PREFIX
from tests.support.result_cases import FIXED_TIME, brain_case, ct_case, cxr_case, nothing_found_case

READER = VerifyingObserver("Reader^Rita", "Test Hospital Radiology")


def _roundtrip(dataset) -> Dataset:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _name(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def _children(item: Dataset, meaning: str) -> list[Dataset]:
    return [child for child in item.get("ContentSequence", []) if _name(child) == meaning]


def _child(item: Dataset, meaning: str) -> Dataset:
    found = _children(item, meaning)
    assert len(found) == 1, f"expected one {meaning!r}, found {len(found)}"
    return found[0]


def _groups(report: Dataset) -> list[Dataset]:
    return _children(_child(report, "Imaging Measurements"), "Measurement Group")


def _texts(report: Dataset) -> dict[str, str]:
    return {_name(i): str(i.TextValue) for i in _child(report, "Qualitative Evaluations").ContentSequence}


def _ct_draft(demo: bool = True):
    case = ct_case(demo=demo)
    seg = build_segmentation(case.content.findings, case.uids, now=FIXED_TIME)
    draft = build_draft_report(case.content, case.uids, segmentation=seg, now=FIXED_TIME)
    return case, seg, draft


def test_ct_draft_has_draft_flags_device_observer_and_procedure():
    case, _, draft = _ct_draft()
    report = _roundtrip(draft)
    assert (report.CompletionFlag, report.VerificationFlag, report.PreliminaryFlag) == (
        "PARTIAL", "UNVERIFIED", "PRELIMINARY")
    assert report.StudyInstanceUID == case.study.study_instance_uid and report.SeriesNumber == 9901
    assert report.PatientID == "M3E-CT" and report.AccessionNumber == "ACC-CT-1"
    assert "AI DRAFT" in report.SeriesDescription and "DEMO" in report.SeriesDescription
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert _child(report, "Observer Type").ConceptCodeSequence[0].CodeMeaning == "Device"
    assert _child(report, "Device Observer Name").TextValue == "VILA-M3-8B (torch-cpu)"
    assert _child(report, "Device Observer Model Name").TextValue == "VILA-M3-8B 1.0"
    assert _child(report, "Device Observer UID").UID == case.uids.device_uid("sha256:" + "ab" * 32)
    assert _child(report, "Procedure reported").ConceptCodeSequence[0].CodeValue == "77477000"


def test_ct_draft_volumes_reference_their_seg_segments_with_tracking_identifiers():
    case, seg, draft = _ct_draft()
    report = _roundtrip(draft)
    groups = _groups(report)
    segments = case.content.findings.segmentation.segments
    assert [_child(g, "Tracking Identifier").TextValue for g in groups] == [s.name for s in segments]
    for number, (group, segment) in enumerate(zip(groups, segments), start=1):
        assert _child(group, "Tracking Unique Identifier").UID == case.uids.tracking_uid(segment.name)
        volume = _child(group, "Volume").MeasuredValueSequence[0]
        assert float(volume.NumericValue) == pytest.approx(segment.volume_ml)
        assert volume.MeasurementUnitsCodeSequence[0].CodeValue == "mL"
        reference = _child(group, "Referenced Segment").ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert int(reference.ReferencedSegmentNumber) == number
        assert _child(group, "Algorithm Name").TextValue == "VISTA3D"
    tumor = groups[3]
    assert _child(tumor, "Finding").ConceptCodeSequence[0].CodeMeaning == "Neoplasm"
    assert _child(tumor, "Finding Site").ConceptCodeSequence[0].CodeMeaning == "Liver"


def test_draft_lists_every_source_instance_and_the_seg_as_evidence():
    case, seg, draft = _ct_draft()
    report = _roundtrip(draft)
    referenced = {
        item.ReferencedSOPInstanceUID
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in case.study.series["ct"]} | {seg.SOPInstanceUID}


def test_draft_names_each_algorithm_as_processing_equipment_with_a_device_uid():
    case, _, draft = _ct_draft()
    equipment = [e for e in _roundtrip(draft).ContributingEquipmentSequence if "DeviceUID" in e]
    assert [e.ManufacturerModelName for e in equipment] == ["VISTA3D", "VILA-M3-8B"]
    for item in equipment:
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert "DEMO" in item.ContributionDescription
    assert equipment[0].DeviceUID == case.uids.device_uid("sha256:" + "cd" * 32)
    assert equipment[0].DeviceUID != equipment[1].DeviceUID


def test_draft_states_it_is_an_ai_draft_and_carries_question_and_narrative():
    case, _, draft = _ct_draft()
    texts = _texts(_roundtrip(draft))
    assert "AI-generated DRAFT for a qualified reader" in texts["AI draft statement"]
    assert texts["AI draft statement"].startswith("DEMO")
    assert texts["Question asked of the model"] == case.content.narrative.question
    assert texts["Findings"] == DEMO_NARRATIVE_PREFIX + case.content.narrative.answer  # DEMO in the narrative too


def test_draft_without_demo_weights_does_not_say_demo():
    case, _, draft = _ct_draft(demo=False)
    report = _roundtrip(draft)
    assert "DEMO" not in _texts(report)["AI draft statement"] and "DEMO" not in report.SeriesDescription
    assert _texts(report)["Findings"] == case.content.narrative.answer
    assert "AI-generated DRAFT" in _texts(report)["AI draft statement"]


def test_draft_uids_are_the_same_when_the_report_stage_runs_again():
    _, _, first = _ct_draft()
    _, _, second = _ct_draft()
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (second.SOPInstanceUID, second.SeriesInstanceUID)


def test_cxr_pathologies_are_scored_qualitative_evaluations_on_the_source_image():
    case = cxr_case()
    report = _roundtrip(build_draft_report(case.content, case.uids, now=FIXED_TIME))
    groups = {_child(g, "Tracking Identifier").TextValue: g for g in _groups(report)}
    assert len(groups) == 18
    effusion = groups["Effusion"]
    assert _child(effusion, "Finding").ConceptCodeSequence[0].CodeMeaning == "Pleural effusion"
    assert float(_child(effusion, "AI model score").MeasuredValueSequence[0].NumericValue) == pytest.approx(0.8)
    assert _child(effusion, "Pleural effusion").ConceptCodeSequence[0].CodeMeaning == "Present"
    assert _child(groups["Hernia"], "Hernia").ConceptCodeSequence[0].CodeMeaning == "Absent"
    source = _child(effusion, "Source of Measurement").ReferencedSOPSequence[0]
    assert source.ReferencedSOPInstanceUID == case.study.series["cxr"][0].SOPInstanceUID
    assert _child(report, "Procedure reported").ConceptCodeSequence[0].CodeMeaning == "Plain radiography"


def test_brain_draft_reports_tc_wt_et_and_all_four_sequences_as_evidence():
    case = brain_case()
    seg = build_segmentation(case.content.findings, case.uids)
    report = _roundtrip(build_draft_report(case.content, case.uids, segmentation=seg))
    assert [_child(g, "Tracking Identifier").TextValue for g in _groups(report)] == [
        "tumor core", "whole tumor", "enhancing tumor"]
    series = {s.SeriesInstanceUID for s in report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert series == {d[0].SeriesInstanceUID for d in case.study.series.values()} | {seg.SeriesInstanceUID}
    assert "DEMO" not in _texts(report)["AI draft statement"]


def test_draft_refuses_a_segmentation_finding_without_its_seg():
    case = ct_case()
    with pytest.raises(ValueError, match="pass the SEG"):
        build_draft_report(case.content, case.uids)
    with pytest.raises(TypeError, match="DraftReportContent"):
        build_draft_report(case.content.findings, case.uids)
    with pytest.raises(TypeError, match="VLM's AlgorithmIdentity"):
        DraftReportContent(case.content.findings, Narrative("q", "a"), model="VILA")


def test_verified_report_replaces_the_draft_with_reader_and_amendment():
    case, _, draft = _ct_draft(demo=False)
    draft = _roundtrip(draft)
    verified = _roundtrip(build_verified_report(
        draft, READER, case.uids, amendment=Amendment("Liver normal; small lesion.", "Volumes checked."),
        now=FIXED_TIME))
    assert (verified.CompletionFlag, verified.VerificationFlag, verified.PreliminaryFlag) == (
        "COMPLETE", "VERIFIED", "FINAL")
    observer = verified.VerifyingObserverSequence[0]
    assert (str(observer.VerifyingObserverName), observer.VerifyingOrganization) == (READER.name, READER.organisation)
    assert observer.VerificationDateTime == "20260102030405"
    predecessor = verified.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == draft.SOPInstanceUID
    assert verified.SOPInstanceUID != draft.SOPInstanceUID and verified.SeriesNumber == 9904
    assert verified.StudyInstanceUID == draft.StudyInstanceUID and verified.PatientID == draft.PatientID
    assert _children(verified, "Person Observer Name")[0].PersonName == READER.name
    assert _children(verified, "Device Observer Name")[0].TextValue == "VILA-M3-8B (torch-cpu)"
    texts = _texts(verified)
    assert "AI draft statement" not in texts
    assert "verified by Reader^Rita (Test Hospital Radiology)" in texts["Verification statement"]
    assert "DEMO" not in texts["Verification statement"] and "DEMO" not in verified.SeriesDescription
    assert texts["Findings"] == "Liver normal; small lesion." and texts["Comment"] == "Volumes checked."
    assert len(_groups(verified)) == len(_groups(draft))
    assert verified.CurrentRequestedProcedureEvidenceSequence == draft.CurrentRequestedProcedureEvidenceSequence
    assert [e.DeviceUID for e in verified.ContributingEquipmentSequence if "DeviceUID" in e] == [
        e.DeviceUID for e in draft.ContributingEquipmentSequence if "DeviceUID" in e]


def test_finding_corrections_are_written_into_the_verified_report_and_checked():
    from dicom_node.results import FindingCorrection

    case, _, draft = _ct_draft(demo=False)
    corrections = (FindingCorrection("hepatic tumor", False, "a simple cyst"), FindingCorrection("liver", None, "fatty"))
    verified = _roundtrip(build_verified_report(_roundtrip(draft), READER, case.uids,
                                                amendment=Amendment(finding_corrections=corrections), now=FIXED_TIME))
    comments = [item.TextValue for item in _text_items_named(verified, "Comment")]
    assert comments == ["Reader's assessment of hepatic tumor: absent. a simple cyst",
                        "Reader's assessment of liver: as drafted. fatty"]
    with pytest.raises(ValueError, match="needs present/absent or a note"):
        FindingCorrection("liver")
    with pytest.raises(TypeError, match="present must be"):
        FindingCorrection("liver", "yes")
    with pytest.raises(TypeError, match="FindingCorrection objects"):
        Amendment(finding_corrections=("liver: absent",))


def _text_items_named(dataset, name: str) -> list:
    found = []

    def walk(items):
        for item in items or []:
            if item.get("ValueType") == "TEXT" and item.ConceptNameCodeSequence[0].CodeMeaning == name:
                found.append(item)
            walk(item.get("ContentSequence"))

    walk(dataset.ContentSequence)
    return found


def test_a_demo_draft_is_never_verified():
    case, _, draft = _ct_draft(demo=True)
    for amendment in (None, Amendment("Looks fine.")):
        with pytest.raises(ValueError, match="DEMO .*can never be verified"):
            build_verified_report(_roundtrip(draft), READER, case.uids, amendment=amendment, now=FIXED_TIME)


def test_approval_without_amendment_keeps_the_draft_narrative_and_revisions_get_new_uids():
    case, _, draft = _ct_draft(demo=False)
    first = build_verified_report(draft, READER, case.uids, now=FIXED_TIME)
    second = build_verified_report(first, READER, case.uids, amendment=Amendment(narrative="Second look."),
                                   revision=2, now=FIXED_TIME)
    assert _texts(_roundtrip(first))["Findings"] == case.content.narrative.answer
    assert first.SOPInstanceUID != second.SOPInstanceUID and second.InstanceNumber == 2
    assert second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == first.SOPInstanceUID


def test_a_verified_report_cannot_be_built_without_observer_and_organisation():
    case, _, draft = _ct_draft()
    with pytest.raises(TypeError, match="observer must be a VerifyingObserver"):
        build_verified_report(draft, None, case.uids)
    with pytest.raises(ValueError, match="organisation must not be empty"):
        VerifyingObserver("Reader^Rita", "")
    with pytest.raises(ValueError, match="name must not be empty"):
        VerifyingObserver(" ", "Hospital")
    with pytest.raises(TypeError, match="Comprehensive 3D SR"):
        build_verified_report(case.study.series["ct"][0], READER, case.uids)
    with pytest.raises(ValueError, match="revision"):
        build_verified_report(draft, READER, case.uids, revision=0)


def test_a_revised_verified_report_names_only_the_latest_reader():
    case, _, draft = _ct_draft(demo=False)
    first = build_verified_report(draft, READER, case.uids, now=FIXED_TIME)
    second = _roundtrip(build_verified_report(first, VerifyingObserver("Second^Sam", "Other Hospital"), case.uids,
                                              revision=2, now=FIXED_TIME))
    assert [str(i.PersonName) for i in _children(second, "Person Observer Name")] == ["Second^Sam"]
    assert len(_children(second, "Device Observer Name")) == 1
    assert "verified by Second^Sam" in _texts(second)["Verification statement"]


def test_a_reader_name_without_components_is_kept_whole():
    assert VerifyingObserver("Rita Reader", "Hospital").name == "Rita Reader^"
    assert VerifyingObserver("Reader^Rita", "Hospital").name == "Reader^Rita"


def test_empty_question_and_answer_and_an_empty_segment_still_make_a_valid_report():
    case = ct_case(demo=False)
    findings = case.content.findings
    segments = (StructureSegment("liver", (1,), 1.0), StructureSegment("spleen", (3,)))  # no spleen voxels
    sparse = ExpertFindings(findings.algorithm, findings.source_images,
                            LabelSegmentation(case.labels, findings.segmentation.affine, segments))
    seg = build_segmentation(sparse, case.uids)
    report = _roundtrip(build_draft_report(DraftReportContent(sparse, Narrative("", " "), case.content.model),
                                           case.uids, segmentation=seg))
    texts = _texts(report)
    assert texts["Question asked of the model"] == "(no question was asked)"
    assert texts["Findings"] == "(the model gave no answer)"
    spleen = _groups(report)[1]
    assert _children(spleen, "Volume") == []
    assert int(_child(spleen, "Referenced Segment").ReferencedSOPSequence[0].ReferencedSegmentNumber) == 2


def _evidence(report: Dataset) -> set[str]:
    return {item.ReferencedSOPInstanceUID for study in report.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}


@pytest.mark.parametrize("kind, expert", [("ct", "VISTA3D"), ("brain", "BraTS SegResNet")])
def test_a_draft_where_the_expert_found_nothing_says_so_without_measurements(kind, expert):
    case = nothing_found_case(kind)
    report = _roundtrip(build_draft_report(case.content, case.uids, now=FIXED_TIME))
    assert (report.CompletionFlag, report.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert _children(report, "Imaging Measurements") == []
    modality = str(case.content.findings.source_images[0].Modality)
    assert _child(report, "Procedure reported").ConceptCodeSequence[0].CodeValue == procedure_code(modality).value
    assert _child(report, "Observer Type").ConceptCodeSequence[0].CodeMeaning == "Device"
    texts = _texts(report)
    assert f"The expert model {expert} (version" in texts["Finding"]
    assert "found no structure and reported no score" in texts["Finding"]
    assert texts["AI draft statement"].startswith("DEMO") and "DEMO" in report.SeriesDescription
    assert texts["Findings"] == DEMO_NARRATIVE_PREFIX + "No abnormality is seen."
    sources = case.content.findings.source_images + case.content.findings.other_evidence
    assert _evidence(report) == {d.SOPInstanceUID for d in sources}  # no SEG among the evidence


def test_a_draft_with_findings_has_no_nothing_found_statement():
    _, _, draft = _ct_draft()
    assert "Finding" not in _texts(_roundtrip(draft))


def test_a_draft_where_the_expert_found_nothing_refuses_a_seg():
    case = nothing_found_case("ct")
    _, seg, _ = _ct_draft()
    with pytest.raises(ValueError, match="findings have no segmentation"):
        build_draft_report(case.content, case.uids, segmentation=seg)
    with pytest.raises(ValueError, match="no segmentation to write"):
        build_segmentation(case.content.findings, case.uids)


def test_a_nothing_found_draft_is_verified_and_amended_like_any_other():
    case = nothing_found_case("ct", demo=False)
    draft = _roundtrip(build_draft_report(case.content, case.uids, now=FIXED_TIME))
    approved = _roundtrip(build_verified_report(draft, READER, case.uids, now=FIXED_TIME))
    assert (approved.CompletionFlag, approved.VerificationFlag) == ("COMPLETE", "VERIFIED")
    texts = _texts(approved)
    assert "verified by Reader^Rita" in texts["Verification statement"] and "AI draft statement" not in texts
    assert not texts["Verification statement"].startswith("DEMO")
    assert texts["Finding"] == _texts(draft)["Finding"] and texts["Findings"] == "No abnormality is seen."
    assert _children(approved, "Imaging Measurements") == []
    amended = _roundtrip(build_verified_report(
        approved, READER, case.uids, amendment=Amendment("Small cyst missed by the model.", "Checked: not nothing."),
        revision=2, now=FIXED_TIME))
    texts = _texts(amended)
    assert texts["Findings"] == "Small cyst missed by the model." and texts["Comment"] == "Checked: not nothing."
    assert amended.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == approved.SOPInstanceUID
    assert _evidence(amended) == _evidence(draft)


def test_a_draft_whose_evidence_lacks_the_seg_its_groups_reference_is_not_verified():
    case, seg, draft = _ct_draft(demo=False)
    draft = _roundtrip(draft)
    studies = draft.CurrentRequestedProcedureEvidenceSequence
    studies[0].ReferencedSeriesSequence = [
        s for s in studies[0].ReferencedSeriesSequence if s.SeriesInstanceUID != seg.SeriesInstanceUID]
    with pytest.raises(ValueError, match=f'No evidence was provided .* referenced in the document content: "{seg.SOPInstanceUID}"'):
        build_verified_report(draft, READER, case.uids, now=FIXED_TIME)
