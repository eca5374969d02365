"""A study as the pipeline leaves it for a reader: catalog rows, a finished run with stage timings, and a DRAFT report
whose SR (written by dicom_node.results from the CT result case), overlay PNG and transcript are real files and data."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from dicom_node.results import build_draft_report, build_segmentation
from engines.agent.transcript import (
    ExpertCallRecord,
    ExpertResultSummary,
    ExpertSource,
    ImageRecord,
    Outcome,
    SliceRecord,
    Transcript,
    TriggerRecord,
    TurnRecord,
)
from service.config import Settings
from service.db.models import (
    Instance,
    PipelineRun,
    Report,
    RunStatus,
    Series,
    StageRun,
    StageStatus,
    Study,
    StudyStatus,
    utcnow,
)
from service.db.session import session_scope
from tests.support.result_cases import FIXED_TIME, ct_case
from tests.support.source_study import brain_mr_study, cxr_study, write_datasets

__all__ = ["seed_reviewable_study", "seed_failed_run", "seed_radiograph_study", "overlay_png"]

STAGES = ("plan", "prepare", "expert", "vlm", "report", "deliver")


def overlay_png(size: int = 96) -> bytes:
    """A grey CT-like slice with a red and a green region, as the overlay the model saw."""
    y, x = np.mgrid[0:size, 0:size]
    grey = (80 + 100 * np.exp(-((x - size / 2) ** 2 + (y - size / 2) ** 2) / (size * 6))).astype(np.uint8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    rgb[20:50, 15:45] = (230, 40, 40)
    rgb[55:80, 50:75] = (40, 200, 60)
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _transcript(question: str, answer: str) -> dict:
    turn_1 = TurnRecord(1, f"<image>{question}", [ImageRecord("slice", [512, 512], 3)], None,
                        f"USER: <image>{question} ASSISTANT:", "This looks like a CT image. <VISTA3D(hepatic tumor)>",
                        "eos", 612, 14, 1024, 0.21, 0.9)
    turn_2 = TurnRecord(2, "The results are <image>. The colors in this image describe liver (red), hepatic tumor "
                           "(green). Use this result to respond to: " + question,
                        [ImageRecord("overlay", [512, 512], 3)], None, "(turn 2 prompt)", answer, "eos", 1240, 31,
                        1024, 0.35, 1.7)
    expert = ExpertResultSummary("VISTA3D", "hepatic tumor", "onnxruntime-cpu", "0.5.4", True,
                                 {"1": "liver", "26": "hepatic tumor"}, {"liver": 0.48, "hepatic tumor": 0.016},
                                 timings={"preprocess": 0.4, "inference": 2.2, "postprocess": 0.3})
    return Transcript(
        question=question, modality="CT", brats_sequences=False, template="llama_3", backend="vila", model="VILA-M3-8B",
        outcome=Outcome.ANSWERED_WITH_EXPERT, final_answer=answer, turns=[turn_1, turn_2],
        trigger=TriggerRecord("expert", "<VISTA3D(hepatic tumor)>", "VISTA3D", "hepatic tumor", "hepatic tumor"),
        expert_call=ExpertCallRecord("VISTA3D", "hepatic tumor", ExpertSource.RAN, run_s=2.9, result=expert,
                                     overlay_legend=[["red", "liver"], ["green", "hepatic tumor"]]),
        slice=SliceRecord("most_structure", 3, 6, "the slice with the most labelled voxels"),
        timings={"turn_1": 1.1, "expert": 2.9, "turn_2": 2.05, "total": 6.3},
    ).to_dict()


def _catalog(session, settings: Settings, datasets: list, description: str, modality: str,
             status: StudyStatus) -> Study:
    """Catalog rows for ``datasets`` (one series), written into the spool as the SCP would have stored them."""
    now = utcnow()
    first = datasets[0]
    study_uid = first.StudyInstanceUID
    study = Study(study_uid=study_uid, status=status, modalities=modality, study_description=description,
                  study_date="20260102", calling_ae="MODALITY", first_received_at=now - timedelta(minutes=5),
                  last_received_at=now - timedelta(minutes=4), completed_at=now - timedelta(minutes=3),
                  patient_name=str(first.get("PatientName", "")), patient_id=str(first.get("PatientID", "")),
                  accession_number=str(first.get("AccessionNumber", "")))
    session.add(study)
    session.flush()
    series = Series(study_id=study.id, series_uid=first.SeriesInstanceUID, modality=modality,
                    series_description="Axial", series_number=2,
                    body_part_examined=first.get("BodyPartExamined", ""))
    session.add(series)
    session.flush()
    for ds, path in zip(datasets, write_datasets(settings.spool_dir / study_uid, datasets)):
        session.add(Instance(series_id=series.id, sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                             transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                             path=str(path.relative_to(settings.spool_dir)), size_bytes=path.stat().st_size,
                             digest="0" * 64, calling_ae="MODALITY"))
    return study


def _run(session, study: Study, status: RunStatus, failed_stage: str = "") -> PipelineRun:
    now = utcnow()
    run = PipelineRun(study_id=study.id, run_number=1, trigger="complete", status=status, route={"destinations": []},
                      created_at=now - timedelta(minutes=3), finished_at=now - timedelta(minutes=1),
                      error=f"{failed_stage}: the expert model ran out of memory" if failed_stage else "",
                      error_stage=failed_stage)
    session.add(run)
    session.flush()
    started = now - timedelta(minutes=3)
    for i, stage in enumerate(STAGES):
        if failed_stage and STAGES.index(failed_stage) < i:
            break
        failed = stage == failed_stage
        session.add(StageRun(run_id=run.id, stage=stage, status=StageStatus.FAILED if failed else StageStatus.DONE,
                             attempts=1, started_at=started + timedelta(seconds=10 * i),
                             finished_at=started + timedelta(seconds=10 * i + 1.5 + i),
                             worker="worker-1@edge", error="CUDA out of memory" if failed else ""))
    return run


def seed_reviewable_study(session_factory, settings: Settings, *, demo: bool = False) -> str:
    """A CT study, done, with a DRAFT report (version 1) to review; returns its Study Instance UID. ``demo``: made with
    DEMO models (such a draft can only be rejected)."""
    case = ct_case(demo=demo)
    study_uid = case.study.study_instance_uid
    folder = settings.results_dir / study_uid / "run-1"
    folder.mkdir(parents=True, exist_ok=True)
    segmentation = build_segmentation(case.content.findings, case.uids, now=FIXED_TIME)
    seg_path = folder / "seg.dcm"
    segmentation.save_as(seg_path, enforce_file_format=True)
    draft = build_draft_report(case.content, case.uids, segmentation=segmentation, now=FIXED_TIME)
    sr_path = folder / "draft-sr.dcm"
    draft.save_as(sr_path, enforce_file_format=True)
    overlay_path = folder / "overlay.png"
    overlay_path.write_bytes(overlay_png())
    narrative = case.content.narrative
    with session_scope(session_factory) as session:
        study = _catalog(session, settings, case.study.series["ct"], "CT ABDOMEN", "CT", StudyStatus.DONE)
        run = _run(session, study, RunStatus.DONE)
        session.add(Report(
            study_id=study.id, run_id=run.id, demo=demo, question=narrative.question, narrative=narrative.answer,
            findings={"expert": "VISTA3D", "volumes_ml": {"liver": 0.48, "hepatic tumor": 0.016}},
            transcript=_transcript(narrative.question, narrative.answer),
            objects={"sr": {"path": str(sr_path), "sop_instance_uid": draft.SOPInstanceUID,
                            "sop_class_uid": draft.SOPClassUID},
                     "seg": {"path": str(seg_path), "sop_instance_uid": segmentation.SOPInstanceUID,
                             "sop_class_uid": segmentation.SOPClassUID},
                     "overlay_png": str(overlay_path)}))
    return study_uid


def seed_failed_run(session_factory, settings: Settings) -> str:
    """A brain MR study whose run failed in the expert stage (for the worklist's errors and the admin page)."""
    datasets = brain_mr_study().series["t1c"]
    with session_scope(session_factory) as session:
        study = _catalog(session, settings, datasets, "MR BRAIN", "MR", StudyStatus.FAILED)
        _run(session, study, RunStatus.FAILED, failed_stage="expert")
    return datasets[0].StudyInstanceUID


def seed_skipped_run(session_factory, settings: Settings, reason: str) -> str:
    """A knee MR study whose run was skipped in plan (no rule's anatomy matched), with ``reason`` as the ledger keeps it."""
    datasets = brain_mr_study().series["t1c"]
    study_uid, series_uid = generate_uid(), generate_uid()  # apart from seed_failed_run's study of the same maker
    for ds in datasets:
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
    with session_scope(session_factory) as session:
        study = _catalog(session, settings, datasets, "MR KNEE", "MR", StudyStatus.SKIPPED)
        run = _run(session, study, RunStatus.SKIPPED)
        run.error = reason
    return datasets[0].StudyInstanceUID


def seed_radiograph_study(session_factory, settings: Settings) -> str:
    """A chest radiograph (DX), done, with a draft whose findings are CXR scores and no overlay (none is drawn for a
    radiograph: the page shows the image itself)."""
    datasets = cxr_study(size=64).series["cxr"]
    with session_scope(session_factory) as session:
        study = _catalog(session, settings, datasets, "CHEST PA", "DX", StudyStatus.DONE)
        run = _run(session, study, RunStatus.DONE)
        session.add(Report(study_id=study.id, run_id=run.id, question="Is there a pneumothorax?",
                           narrative="No pneumothorax. " + "The lungs are clear and well expanded; " * 20,
                           findings={"expert": "CXR", "scores": {"Pneumothorax": 0.12, "Effusion": 0.71}},
                           transcript={}, objects={}))
    return datasets[0].StudyInstanceUID
