"""An expert that found nothing (VISTA3D: no label; BraTS: all labels 0) still gives a draft report: the real plan,
prepare, report and deliver stages run on a stored study, the expert's result is an all-zero label volume, and the
run ends ``done`` with an SR that says so and no SEG; a reader approves and amends it (made with real weights) like any
other draft.

TEST DOUBLES: the expert and VILA-M3 stages (random demo weights cannot be told to find nothing); what they hand on is
what the real stages write (``ExpertStageResult``, the VLM stage's result keys and transcripts file).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from engines.experts import ExpertName, ExpertResult
from service.config import Settings
from service.db.models import Report, ReportStatus, Role, Study, StudyStatus
from service.db.session import session_scope
from service.pipeline.executor import StageOutcome
from service.pipeline.stages import Stage
from service.pipeline.work import build_stage_handlers
from service.pipeline.contracts import ExpertStageResult
from service.pipeline.work.resources import load_arrays, write_json
from service.review import ReviewAction, ReviewRequest, ReviewService
from service.security.users import Principal
from tests.support.pipeline_study import brain_study, ct_study, run_inline, store_in_spool

EXPERTS = {"ct": ("VISTA3D", "VISTA3D"), "mri": ("BRATS", "BraTS SegResNet")}


class ExpertFindingNothing:
    """TEST DOUBLE of the expert stage: the route's expert, its label volume all 0 on the prepared grid."""

    def __init__(self, resources, demo: bool) -> None:
        self.resources, self.demo = resources, demo

    def __call__(self, claim) -> StageOutcome:
        arrays = load_arrays(claim.results["prepare"]["input"])
        name = ExpertName(claim.route["expert"])
        result = ExpertResult(expert=name, argument=claim.route.get("argument"), backend="onnxruntime-cpu",
                              model_version="0.5.4", demo=self.demo,
                              label_volume=np.zeros(arrays["volume"].shape[-3:], dtype=np.uint8),
                              affine=arrays["affine"])
        path = self.resources.work_dir(claim.study_uid, claim.run_id) / "labels.npz"
        return StageOutcome(result=ExpertStageResult.from_expert_result(result, path, "sha256:" + "cd" * 32,
                                                                         elapsed_s=0.1))


class ModelAnswering:
    """TEST DOUBLE of the VLM stage: one consultation answered without an expert call, in the stage's result form."""

    def __init__(self, resources, demo: bool) -> None:
        self.resources, self.demo = resources, demo

    def __call__(self, claim) -> StageOutcome:
        question = claim.route["questions"][0]
        transcript = {"question": question, "outcome": "answered", "final_answer": "Nothing abnormal.", "turns": [],
                      "expert_call": None}
        folder = self.resources.work_dir(claim.study_uid, claim.run_id)
        return StageOutcome(result={
            "transcripts": write_json(folder / "transcripts.json", [transcript]), "questions": [question],
            "answers": ["Nothing abnormal."], "outcomes": ["answered"], "overlay_png": None, "overlay_source": "",
            "overlay_slice": None, "model_s": 0.1,
            "model": {"name": "VILA-M3 demo", "version": "demo", "backend": "torch-cpu",
                      "weights_digest": "sha256:" + "ab" * 32, "demo": self.demo},
        })


def _run_finding_nothing(settings: Settings, session_factory, datasets, demo: bool = True) -> tuple[str, list]:
    handlers = build_stage_handlers(settings, session_factory)
    resources = handlers[Stage.REPORT].resources
    handlers[Stage.EXPERT] = ExpertFindingNothing(resources, demo)
    handlers[Stage.VLM] = ModelAnswering(resources, demo)
    uid = store_in_spool(settings, session_factory, datasets)
    return uid, run_inline(settings, session_factory, uid, handlers).outcomes


def _texts(sr) -> dict[str, str]:
    container = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning
                     == "Qualitative Evaluations")
    return {i.ConceptNameCodeSequence[0].CodeMeaning: str(i.TextValue) for i in container.ContentSequence}


@pytest.mark.parametrize("kind", ["ct", "mri"])
def test_a_study_where_the_expert_found_nothing_gets_a_draft_without_seg(kind, tmp_path, database_url,
                                                                         session_factory):
    settings = Settings(home=tmp_path, database_url=database_url)
    uid, outcomes = _run_finding_nothing(settings, session_factory, {"ct": ct_study, "mri": brain_study}[kind]())
    assert sorted(stage for stage, outcome in outcomes if outcome == "done") == sorted(
        ["plan", "prepare", "expert", "vlm", "report", "deliver"])
    assert {outcome for _, outcome in outcomes} <= {"done", "not-claimed"}
    route_expert, expert_name = EXPERTS[kind]
    with session_scope(session_factory) as session:
        study = session.scalar(select(Study).where(Study.study_uid == uid))
        report = session.scalars(select(Report)).one()
        assert study.status is StudyStatus.DONE
        assert report.status is ReportStatus.DRAFT and report.demo
        assert report.findings["expert"] == route_expert and report.narrative == "Nothing abnormal."
        objects = report.objects
    assert set(objects) == {"sr"}  # no SEG (and no overlay: the model showed none)
    sr = pydicom.dcmread(objects["sr"]["path"])
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
    assert "DEMO" in sr.SeriesDescription
    assert [i.ConceptNameCodeSequence[0].CodeMeaning for i in sr.ContentSequence if i.ValueType == "CONTAINER"] \
        == ["Qualitative Evaluations"]
    texts = _texts(sr)
    assert texts["Finding"].startswith(f"The expert model {expert_name} (version 0.5.4) found no structure")
    assert texts["AI draft statement"].startswith("DEMO")
    assert texts["Findings"] == "DEMO (random weights, meaningless): Nothing abnormal."


def test_a_reader_approves_then_amends_a_draft_where_the_expert_found_nothing(tmp_path, database_url,
                                                                              session_factory):
    settings = Settings(home=tmp_path, database_url=database_url)
    uid, _ = _run_finding_nothing(settings, session_factory, ct_study(), demo=False)  # DEMO drafts are never verified
    delivered: list[int] = []
    review = ReviewService(settings, deliver=delivered.append)
    reader = Principal(1, "rita", Role.REVIEWER, "Reader^Rita", "Test Hospital Radiology")
    with session_scope(session_factory) as session:
        report = review.review(session, uid, reader, ReviewRequest(ReviewAction.APPROVE, version=1))
        approved_status, approved = report.status, dict(report.objects["verified"])
    with session_scope(session_factory) as session:
        report = review.review(session, uid, reader, ReviewRequest(ReviewAction.AMEND, version=2,
                                                                   narrative="A small cyst, missed by the model."))
        amended_status, amended = report.status, dict(report.objects["verified"])
    assert (approved_status, amended_status) == (ReportStatus.APPROVED, ReportStatus.AMENDED)
    assert len(delivered) == 2
    first, second = pydicom.dcmread(approved["path"]), pydicom.dcmread(amended["path"])
    for verified in (first, second):
        assert (verified.CompletionFlag, verified.VerificationFlag) == ("COMPLETE", "VERIFIED")
        texts = _texts(verified)
        assert "found no structure" in texts["Finding"] and "verified by Reader^Rita" in texts["Verification statement"]
    assert _texts(first)["Findings"] == "Nothing abnormal."
    assert _texts(second)["Findings"] == "A small cyst, missed by the model."
    predecessor = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == first.SOPInstanceUID
