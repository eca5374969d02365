"""Review of an AI draft by a qualified reader: approve, amend or reject.

Approve and amend write a NEW SR (VERIFIED, COMPLETE, the reader as verifying observer, the draft in the Predecessor
Documents Sequence) and deliver it; reject records why and, if configured, delivers an IOCM rejection note. Reviews
are serialised per report by an optimistic version: a reviewer must name the version they read, and the second of two
concurrent reviews gets a conflict instead of silently overwriting the first.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicom_node.network import DicomAddress
from dicom_node.private_files import write_atomically
from dicom_node.results import (
    Amendment,
    FindingCorrection,
    RejectionReason,
    ResultUids,
    VerifyingObserver,
    build_retraction,
    build_verified_report,
    clean_line,
    clean_text,
)
from service.config import RejectAction, Settings
from service.db.models import PipelineRun, Report, ReportStatus, Study, utcnow
from service.destinations import DestinationsStore
from service.pipeline.delivery import DeliveryQueue, ResultObject
from service.security import Principal, record_audit

__all__ = ["ReviewAction", "ReviewRequest", "ReviewConflict", "ReviewError", "ReviewService", "latest_report",
           "DemoReportNotVerifiable", "DEMO_NOT_VERIFIABLE", "ReviewPreview", "FindingCorrection"]

LOGGER = logging.getLogger(__name__)


class ReviewAction(str, enum.Enum):
    APPROVE = "approve"
    AMEND = "amend"
    REJECT = "reject"


class ReviewConflict(RuntimeError):
    """Someone reviewed the report since the version the caller read."""


class ReviewError(ValueError):
    """The review cannot be done as asked (no report yet, a reject without reason, ...)."""


DEMO_NOT_VERIFIABLE = (
    "this draft was made with DEMO models (random weights): its findings are meaningless, so it can never be "
    "approved or amended into a verified report. Install real weights (m3edge models import) and reprocess the "
    "study, or reject this draft"
)


class DemoReportNotVerifiable(ReviewConflict):
    """Approve or amend asked of a draft made with DEMO (random-weight) models: refused, whatever the version."""

    def __init__(self) -> None:
        super().__init__(DEMO_NOT_VERIFIABLE)


@dataclass(frozen=True)
class ReviewRequest:
    action: ReviewAction
    version: int
    narrative: str | None = None  # amend: the corrected narrative
    comment: str | None = None  # amend: a comment on the findings; reject: the reason
    finding_corrections: tuple[FindingCorrection, ...] = ()  # amend: the reader's word on single findings

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", ReviewAction(self.action))
        object.__setattr__(self, "finding_corrections", tuple(self.finding_corrections))
        for name in ("narrative", "comment"):  # a person's text as DICOM text may hold it (no TAB, no NUL, ...)
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, clean_text(value))
        if self.action is ReviewAction.AMEND and not (self.narrative or self.comment or self.finding_corrections):
            raise ReviewError("amend needs a corrected narrative, a comment on the findings or a corrected finding")
        if self.action is ReviewAction.REJECT and not (self.comment and self.comment.strip()):
            raise ReviewError("reject needs a reason")


def latest_report(session: Session, study_uid: str) -> Report | None:
    return session.execute(
        select(Report).join(Study, Study.id == Report.study_id)
        .where(Study.study_uid == study_uid, Report.status != ReportStatus.SUPERSEDED)
        .order_by(Report.id.desc())
    ).scalars().first()


def _write_atomically(dataset, path: Path) -> None:
    with write_atomically(path) as handle:
        dataset.save_as(handle, enforce_file_format=True)


@dataclass(frozen=True)
class ReviewPreview:
    """What a review would send to PACS, shown to the reader before it is sent (nothing written, nothing taken)."""

    action: ReviewAction
    kind: str  # "verified SR" | "rejection note" | "" (nothing is sent)
    lines: list  # dicom_node.results.summary.ContentLine of the object, or []
    destinations: list[str]
    explanation: str


class ReviewService:
    def __init__(self, settings: Settings, deliver: Callable[[int], object]) -> None:
        """``deliver(run_id)`` asks a worker to send the run's pending deliveries (after the commit)."""
        self.settings = settings
        self.deliver = deliver

    def _reviewable(self, session: Session, study_uid: str, request: ReviewRequest) -> Report:
        report = latest_report(session, study_uid)
        if report is None:
            raise ReviewError(f"study {study_uid} has no report to review yet")
        if report.status is ReportStatus.REJECTED:
            raise ReviewConflict("this draft was rejected; reprocess the study for a new one")
        if report.demo and request.action is not ReviewAction.REJECT:
            raise DemoReportNotVerifiable()
        return report

    @staticmethod
    def _observer(reviewer: Principal) -> VerifyingObserver:
        return VerifyingObserver(name=clean_line(reviewer.display_name or reviewer.name)[:64],
                                 organisation=clean_line(reviewer.organisation or "unknown organisation")[:64])

    def _verified(self, report: Report, run: PipelineRun, study_uid: str, observer: VerifyingObserver,
                  request: ReviewRequest, revision: int):
        objects = dict(report.objects or {})
        current = objects.get("verified") or objects["sr"]
        amendment = Amendment(narrative=request.narrative, findings_comment=request.comment,
                              finding_corrections=request.finding_corrections) \
            if request.action is ReviewAction.AMEND else None
        uids = ResultUids(self.settings.uid_root, study_uid, f"run-{run.run_number}")
        return build_verified_report(dcmread(current["path"]), observer, uids, amendment=amendment, revision=revision)

    def _destinations(self, run: PipelineRun) -> list[DicomAddress]:
        return [DicomAddress.parse(d) for d in (run.route or {}).get("destinations", [])] \
            or DestinationsStore(self.settings).load()

    def preview(self, session: Session, study_uid: str, reviewer: Principal, request: ReviewRequest) -> ReviewPreview:
        """What ``review`` would send for ``request``, built the same way and not written (the version is checked,
        not taken: the confirmed review may still meet a conflict)."""
        from dicom_node.results.summary import sr_content_lines

        report = self._reviewable(session, study_uid, request)
        if report.version != request.version:
            raise ReviewConflict(f"the report changed since version {request.version}; reload it and review again")
        run = session.get(PipelineRun, report.run_id)
        destinations = [str(d) for d in self._destinations(run)]
        revision = int((report.objects or {}).get("revisions", 0)) + 1
        if request.action is ReviewAction.REJECT:
            if self.settings.reject_action == "none":
                return ReviewPreview(request.action, "", [], destinations,
                                     "Nothing is sent to PACS: the draft stays there, unverified, and the reason is "
                                     "recorded here (REJECT_ACTION=none).")
            return ReviewPreview(request.action, "rejection note", [], destinations,
                                 "An IOCM rejection note (Key Object Selection, reason "
                                 f"{self.settings.reject_action}) is sent, withdrawing the draft SR, SEG and overlay.")
        verified = self._verified(report, run, study_uid, self._observer(reviewer), request, revision)
        return ReviewPreview(request.action, "verified SR", sr_content_lines(verified), destinations,
                             "This verified SR (COMPLETE, VERIFIED, signed by you) is sent to PACS and replaces the "
                             "draft there.")

    def review(self, session: Session, study_uid: str, reviewer: Principal, request: ReviewRequest,
               remote_addr: str = "") -> Report:
        report = self._reviewable(session, study_uid, request)
        # Take the report: the conditional bump serialises concurrent reviews (row lock / SQLite write lock).
        taken = session.execute(
            update(Report).where(Report.id == report.id, Report.version == request.version)
            .values(version=Report.version + 1).execution_options(synchronize_session=False)
        ).rowcount
        if taken != 1:
            raise ReviewConflict(f"the report changed since version {request.version}; reload it and review again")
        session.refresh(report)
        observer = self._observer(reviewer)
        run = session.get(PipelineRun, report.run_id)
        uids = ResultUids(self.settings.uid_root, study_uid, f"run-{run.run_number}")
        objects = dict(report.objects or {})
        revision = int(objects.get("revisions", 0)) + 1
        folder = self.settings.results_dir / study_uid / f"run-{run.run_number}"
        if request.action is ReviewAction.REJECT:
            new = self._reject(objects, observer, uids, request, revision, folder, demo=report.demo)
            report.status = ReportStatus.REJECTED
        else:
            verified = self._verified(report, run, study_uid, observer, request, revision)
            path = folder / f"verified-{revision}.dcm"
            _write_atomically(verified, path)
            new = {"path": str(path), "sop_instance_uid": verified.SOPInstanceUID, "sop_class_uid": verified.SOPClassUID}
            objects["verified"] = new
            report.status = ReportStatus.APPROVED if request.action is ReviewAction.APPROVE else ReportStatus.AMENDED
            if request.narrative:
                report.narrative = request.narrative
            if request.finding_corrections:
                report.findings = {**(report.findings or {}), "reader_corrections": [
                    {"name": c.name, "present": c.present, "note": c.note} for c in request.finding_corrections]}
        objects["revisions"] = revision
        report.objects = objects
        report.reviewed_by = reviewer.name
        report.reviewed_at = utcnow()
        report.review_comment = request.comment or ""
        if new is not None:
            destinations = self._destinations(run)
            DeliveryQueue.add(session, run.id, destinations, [ResultObject(new["sop_instance_uid"], Path(new["path"]))])
        record_audit(session, reviewer.name, f"review.{request.action.value}", study_uid=study_uid,
                     remote_addr=remote_addr, detail={"version": request.version, "revision": revision,
                                                      "corrected_findings": len(request.finding_corrections)})
        session.commit()
        if new is not None:
            try:
                self.deliver(run.id)
            except Exception:  # the sweeper delivers pending rows later
                LOGGER.exception("could not ask for delivery of run %s; the sweeper will", run.id)
        return report

    def _reject(self, objects: dict, observer: VerifyingObserver, uids: ResultUids, request: ReviewRequest,
                revision: int, folder: Path, *, demo: bool) -> dict | None:
        if self.settings.reject_action is RejectAction.NONE:
            return None
        rejected = [dcmread(objects[k]["path"]) for k in ("sr", "seg", "overlay") if k in objects]
        reason = (RejectionReason.QUALITY if self.settings.reject_action is RejectAction.QUALITY
                  else RejectionReason.PATIENT_SAFETY)
        note = build_retraction(rejected, observer, uids, reason=reason, explanation=request.comment, revision=revision,
                                demo=demo)
        path = folder / f"rejection-{revision}.dcm"
        _write_atomically(note, path)
        objects["rejection"] = {"path": str(path), "sop_instance_uid": note.SOPInstanceUID,
                                "sop_class_uid": note.SOPClassUID}
        return objects["rejection"]


