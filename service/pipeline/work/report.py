"""Stage ``report``: the draft SR (TID 1500, PARTIAL, UNVERIFIED, DEMO when demo weights ran), the SEG of the
expert's labels and, when ``OVERLAY_SECONDARY_CAPTURE`` is on, the overlay image as Secondary Capture; written
atomically under ``HOME/results/<study>/run-<n>/``, and one ``reports`` row for the run. An expert that found nothing
gives a draft SR that says so, and no SEG.

UIDs derive from (organisation root, study, run), so running this stage again writes the same objects and updates the
same row. A new report supersedes the study's earlier ones (except rejected ones, which keep their state).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset
from sqlalchemy import select, update

from dicom_node.results import (
    AlgorithmIdentity,
    DraftReportContent,
    Narrative,
    ResultUids,
    build_draft_report,
    build_overlay_capture,
    build_segmentation,
    clean_text,
)
from dicom_node.volumes import source_image_at
from service.db.models import PipelineRun, Report, ReportStatus
from service.db.session import session_scope
from service.pipeline.contracts import (
    Consultations,
    ExpertStageResult,
    PreparedInput,
    ReportResult,
    ResultObject,
    VlmIdentity,
)
from service.pipeline.executor import StageOutcome
from service.pipeline.ledger import StageClaim
from service.pipeline.work.findings import expert_algorithm, expert_findings
from service.pipeline.work.resources import StageResources, write_atomically

__all__ = ["ReportStage", "dicom_text", "narrative_of"]

LOGGER = logging.getLogger(__name__)


def _headers(paths: list[str]) -> list[Dataset]:
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]


def dicom_text(text: str) -> str:
    """``text`` as DICOM text may hold it (a model's raw output can carry any control character): ``clean_text``."""
    return clean_text(text)


def narrative_of(vlm: Consultations) -> Narrative:
    """The first question's answer is the narrative; the answers to further questions follow it, listed."""
    questions = [dicom_text(q) for q in vlm.questions or [""]]
    answers = [dicom_text(a) for a in vlm.answers or [""]]
    text = answers[0]
    if len(questions) > 1:
        listed = "\n".join(f"Q: {q}\nA: {a.strip() or '(no answer)'}" for q, a in zip(questions[1:], answers[1:]))
        text = f"{text}\n\nFurther questions:\n{listed}"
    return Narrative(questions[0], text)


def _vlm_identity(model: VlmIdentity) -> AlgorithmIdentity:
    return AlgorithmIdentity(name=str(model.name)[:64], version=str(model.version)[:64] or "unknown",
                             manufacturer="NVIDIA", backend=str(model.backend)[:64] or "unavailable",
                             weights_digest=model.weights_digest, demo=bool(model.demo))


def _write(dataset, path: Path) -> ResultObject:
    with write_atomically(path) as handle:
        dataset.save_as(handle, enforce_file_format=True)
    return ResultObject(path=str(path), sop_instance_uid=str(dataset.SOPInstanceUID),
                        sop_class_uid=str(dataset.SOPClassUID))


class ReportStage:
    def __init__(self, resources: StageResources) -> None:
        self.resources = resources

    def __call__(self, claim: StageClaim) -> StageOutcome:
        settings = self.resources.settings
        prepared, expert, vlm = PreparedInput.of(claim), ExpertStageResult.of(claim), Consultations.of(claim)
        sources = _headers(prepared.source_instances)
        findings = expert_findings(expert, sources, _headers(prepared.other_evidence))
        content = DraftReportContent(findings, narrative_of(vlm), _vlm_identity(vlm.model),
                                     extra_algorithms=self._experts_the_model_ran(vlm, expert.expert.value))
        run_number = self.resources.run_number(claim.run_id)
        uids = ResultUids(settings.uid_root, claim.study_uid, f"run-{run_number}")
        folder = self.resources.results_dir(claim.study_uid, claim.run_id)
        objects: dict[str, ResultObject] = {}
        segmentation = None
        if findings.segmentation is not None:
            segmentation = build_segmentation(findings, uids, demo_run=content.demo,
                                              compression=settings.seg_compression)
            objects["seg"] = _write(segmentation, folder / "seg.dcm")
        if settings.overlay_secondary_capture and vlm.overlay_png:
            objects["overlay"] = self._overlay(vlm, prepared, sources, findings.algorithm, uids, folder, content.demo)
        report = build_draft_report(content, uids, segmentation=segmentation)
        objects["sr"] = _write(report, folder / "sr.dcm")
        self._record(claim, content, expert, vlm, objects)
        LOGGER.info("study %s: draft report written (%s)%s", claim.study_uid, ", ".join(objects),
                    " DEMO" if content.demo else "")
        ordered = [objects[k] for k in ("seg", "overlay", "sr") if k in objects]
        return StageOutcome(result=ReportResult(objects=ordered, demo=content.demo))

    def _experts_the_model_ran(self, vlm: Consultations, route_expert: str) -> tuple[AlgorithmIdentity, ...]:
        """Experts the agent ran itself because the model asked for another one: they contributed too (IHE AIR)."""
        from engines.model_store.layout import EXPERT_FOLDERS

        extra = {}
        for transcript in vlm.transcript_records():
            call = transcript.get("expert_call") or {}
            result = call.get("result")
            if call.get("source") != "ran" or not result or result["expert"] in (route_expert, *extra):
                continue
            folder = self.resources.settings.models_dir / EXPERT_FOLDERS[result["expert"]]
            digest = self.resources.model_digest(folder)
            extra[result["expert"]] = expert_algorithm(ExpertStageResult(
                expert=result["expert"], backend=result["backend"], model_version=result["model_version"],
                demo=bool(result["demo"]), weights_digest=digest))
        return tuple(extra.values())

    def _overlay(self, vlm: Consultations, prepared: PreparedInput, sources: list[Dataset], algorithm, uids,
                 folder: Path, demo: bool) -> ResultObject:
        """The overlay as Secondary Capture, referencing the source frame nearest the axial slice it shows (the
        engines say where that slice lies, ``dicom_node.volumes`` which source frame is there)."""
        from PIL import Image

        from engines.resample import axial_slice_centre

        with Image.open(vlm.overlay_png) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        centre = None
        if vlm.overlay_slice is not None:
            centre = axial_slice_centre(prepared.arrays("affine")["affine"], prepared.shape, vlm.overlay_slice)
        source, frame_number = source_image_at(sources, centre)
        capture = build_overlay_capture(rgb, source, algorithm, uids, demo_run=demo, frame_number=frame_number)
        return _write(capture, folder / "overlay.dcm")

    def _record(self, claim: StageClaim, content: DraftReportContent, expert: ExpertStageResult, vlm: Consultations,
                objects: dict[str, ResultObject]) -> None:
        """The run's ``reports`` row: what the API, the study page and review read (``findings``, ``transcript``,
        ``objects`` keep the shape they have always had)."""
        transcripts = vlm.transcript_records()
        transcript = dict(transcripts[0])
        if len(transcripts) > 1:
            transcript["further_consultations"] = transcripts[1:]
        kept = {name: written.model_dump(mode="json") for name, written in objects.items()}
        if vlm.overlay_png:
            kept["overlay_png"] = vlm.overlay_png
        with session_scope(self.resources.session_factory) as session:
            run = session.get(PipelineRun, claim.run_id)
            session.execute(
                update(Report)
                .where(Report.study_id == run.study_id, Report.run_id != run.id,
                       Report.status.notin_([ReportStatus.REJECTED, ReportStatus.SUPERSEDED]))
                .values(status=ReportStatus.SUPERSEDED)
                .execution_options(synchronize_session=False)
            )
            row = session.execute(select(Report).where(Report.run_id == run.id)).scalar_one_or_none()
            if row is None:
                row = Report(study_id=run.study_id, run_id=run.id)
                session.add(row)
            row.status = ReportStatus.DRAFT
            row.demo = content.demo
            row.question = content.narrative.question
            row.narrative = content.narrative.answer
            row.findings = expert.findings_summary()
            row.transcript = transcript
            row.objects = kept
