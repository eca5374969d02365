"""The report of a study (JSON, or the SR itself with ``Accept: application/dicom``) and its review."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from service.api.deps import CurrentUser, SessionDep, client_address
from service.api.problems import Problem
from service.api.routes.studies import StudyUid
from dicom_node.results import clean_text
from service.review import (
    DemoReportNotVerifiable,
    FindingCorrection,
    ReviewConflict,
    ReviewError,
    ReviewRequest,
    latest_report,
)
from service.security import record_audit

__all__ = ["router", "report_json"]

router = APIRouter(prefix="/api/v1/studies", tags=["reports"])

DRAFT_NOTICE = "AI-generated DRAFT for review by a qualified reader; not a diagnosis."


def report_json(report) -> dict:
    objects = dict(report.objects or {})
    overlay = objects.get("overlay_png")
    overlay_b64 = None
    if overlay and Path(overlay).is_file():
        overlay_b64 = base64.b64encode(Path(overlay).read_bytes()).decode()
    return {
        "status": report.status.value,
        "version": report.version,
        "demo": report.demo,
        "notice": ("DEMO models: " if report.demo else "") + DRAFT_NOTICE,
        # What a reader may do with it: a DEMO draft can only be rejected (random weights are never verified).
        "verifiable": not report.demo,
        "question": report.question,
        "narrative": report.narrative,
        "findings": report.findings,
        "transcript": report.transcript,
        "overlay_png_base64": overlay_b64,
        "objects": {k: {"sop_instance_uid": v["sop_instance_uid"], "sop_class_uid": v["sop_class_uid"]}
                    for k, v in objects.items() if isinstance(v, dict) and "sop_instance_uid" in v},
        "created_at": report.created_at.isoformat(),
        "reviewed_by": report.reviewed_by,
        "reviewed_at": report.reviewed_at.isoformat() if report.reviewed_at else None,
        "review_comment": report.review_comment,
    }


@router.get("/{study_uid}/report", summary="The draft (or verified) report: JSON with the transcript, or the SR",
            responses={200: {"content": {"application/json": {}, "application/dicom": {}}}})
def get_report(study_uid: StudyUid, user: CurrentUser, session: SessionDep, request: Request):
    report = latest_report(session, study_uid)
    if report is None:
        raise Problem(404, "no report", f"study {study_uid} has no report yet (see its pipeline runs)")
    wants_dicom = "application/dicom" in request.headers.get("accept", "")
    record_audit(session, user.name, "report.read", study_uid=study_uid, remote_addr=client_address(request),
                 detail={"format": "dicom" if wants_dicom else "json", "version": report.version})
    if wants_dicom:
        objects = report.objects or {}
        current = objects.get("verified") or objects.get("sr")
        if not current:
            raise Problem(404, "no SR", "this report has no SR object")
        return Response(Path(current["path"]).read_bytes(), media_type="application/dicom")
    return report_json(report)


class FindingCorrectionBody(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64, description="The finding's name in the report")]
    present: Annotated[bool | None, Field(description="true: present, false: absent, null: as drafted")] = None
    note: Annotated[str, Field(max_length=1024)] = ""


class ReviewBody(BaseModel):
    action: Literal["approve", "amend", "reject"]
    version: Annotated[int, Field(ge=1, description="The report version you reviewed (from GET .../report)")]
    narrative: Annotated[str | None, Field(max_length=20_000)] = None
    comment: Annotated[str | None, Field(max_length=10_000, description="amend: on the findings; reject: the reason")] = None
    findings: Annotated[list[FindingCorrectionBody], Field(max_length=256, description="amend: the reader's word on "
                                                           "single findings, written into the verified SR")] = []


@router.post("/{study_uid}/review", summary="Approve, amend or reject the draft; writes and delivers a verified SR",
             description="A draft made with DEMO models can only be rejected: approve and amend answer 409.")
def review(study_uid: StudyUid, body: ReviewBody, user: CurrentUser, session: SessionDep, request: Request) -> dict:
    service = request.app.state.review
    try:
        corrections = tuple(FindingCorrection(f.name, f.present, clean_text(f.note)) for f in body.findings)
        report = service.review(session, study_uid, user, ReviewRequest(body.action, body.version, body.narrative,
                                                                        body.comment, corrections),
                                client_address(request))
    except DemoReportNotVerifiable as exc:
        session.rollback()
        raise Problem(409, "a DEMO draft cannot be verified", str(exc)) from exc
    except ReviewConflict as exc:
        session.rollback()
        raise Problem(409, "review conflict", str(exc)) from exc
    except (ReviewError, ValueError, TypeError) as exc:
        session.rollback()
        raise Problem(422, "invalid review", str(exc)) from exc
    return report_json(report)
