"""Studies: the worklist, one study with its pipeline runs, and reprocessing."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel

from service.api.deps import CurrentUser, SessionDep, client_address
from service.api.problems import Problem
from service.catalog import StudyNotFound, count_studies, get_study, list_studies, study_runs
from service.db.models import StudyStatus
from service.security import record_audit

__all__ = ["router", "StudyUid"]

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
StudyUid = Annotated[str, Path(pattern=UID_PATTERN, max_length=64, description="Study Instance UID")]
DicomDate = Annotated[str | None, Query(pattern=r"^\d{8}$", description="YYYYMMDD, inclusive")]


class StudyPage(BaseModel):
    items: list[dict]
    total: int
    limit: int
    offset: int


@router.get("", response_model=StudyPage, summary="Studies, most recent first")
def list_route(
    user: CurrentUser,
    session: SessionDep,
    request: Request,
    status: StudyStatus | None = None,
    modality: Annotated[str | None, Query(pattern=r"^[A-Z]{1,16}$")] = None,
    date_from: DicomDate = None,
    date_to: DicomDate = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> StudyPage:
    rows = list_studies(session, status=status, modality=modality, date_from=date_from, date_to=date_to, limit=limit,
                        offset=offset)
    total = count_studies(session, status=status, modality=modality, date_from=date_from, date_to=date_to)
    # The items carry patient context: audited with the studies returned (UIDs, never the values).
    record_audit(session, user.name, "studies.list", remote_addr=client_address(request),
                 detail={"studies": [r.study_uid for r in rows], "offset": offset})
    return StudyPage(items=[r.to_json() for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{study_uid}", summary="One study: series, instances, pipeline runs with stage timings and errors")
def detail_route(study_uid: StudyUid, user: CurrentUser, session: SessionDep, request: Request) -> dict:
    try:
        detail = get_study(session, study_uid)
    except StudyNotFound as exc:
        raise Problem(404, "study not found", str(exc)) from exc
    record_audit(session, user.name, "study.read", study_uid=study_uid, remote_addr=client_address(request))
    data = detail.to_json()
    data["runs"] = [run.to_json() for run in study_runs(session, study_uid)]
    return data


class ReprocessRequest(BaseModel):
    from_stage: Literal["plan", "prepare", "expert", "vlm", "report", "deliver"] | None = None


@router.post("/{study_uid}/reprocess", status_code=202, summary="Run the pipeline again (from the failed stage by default)")
def reprocess_route(study_uid: StudyUid, user: CurrentUser, session: SessionDep, request: Request,
                    body: ReprocessRequest | None = None) -> dict:
    intake = request.app.state.intake
    from_stage = body.from_stage if body else None
    try:
        get_study(session, study_uid)
        run_id = intake.reprocess(study_uid, from_stage)
    except StudyNotFound as exc:
        raise Problem(404, "study not found", str(exc)) from exc
    except ValueError as exc:
        raise Problem(409, "cannot reprocess now", str(exc)) from exc
    record_audit(session, user.name, "study.reprocess", study_uid=study_uid, remote_addr=client_address(request),
                 detail={"from_stage": from_stage or "auto"})
    return {"study_uid": study_uid, "run_id": run_id, "from_stage": from_stage or "auto"}


