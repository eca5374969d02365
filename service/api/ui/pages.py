"""The reviewer's pages: the worklist (with a live-refreshed table body) and a study with its draft and review form."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from service.api.deps import SessionDep, client_address
from service.api.routes.reports import report_json
from service.api.routes.studies import StudyUid
from service.api.ui.access import FormFields, PageRefused, PageUser, require_csrf
from service.api.ui.viewer_links import viewer_links
from service.api.ui.worklist import PAGE_SIZE, WorklistFilters, worklist_rows
from service.catalog import StudyNotFound, get_study, study_runs
from service.db.models import StudyStatus
from service.review import (
    DEMO_NOT_VERIFIABLE,
    DemoReportNotVerifiable,
    ReviewAction,
    ReviewConflict,
    ReviewError,
    ReviewRequest,
    latest_report,
)
from service.security import record_audit

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

REFRESH_INTERVAL_S = 5
_REVIEW_DONE = {"approve": "Approved: a verified SR was written and queued for delivery.",
                "amend": "Amended: a verified SR with your corrections was written and queued for delivery.",
                "reject": "Rejected: the reason was recorded."}


def _worklist_context(request: Request, session) -> dict:
    filters = WorklistFilters.from_query(dict(request.query_params))
    rows, total = worklist_rows(session, filters)
    previous = filters.query_args(offset=max(0, filters.offset - PAGE_SIZE)) if filters.offset else None
    following = filters.query_args(offset=filters.offset + PAGE_SIZE) if filters.offset + PAGE_SIZE < total else None
    return {
        "filters": filters, "rows": rows, "total": total, "statuses": [s.value for s in StudyStatus],
        "refresh_query": urlencode(filters.query_args()), "refresh_interval_ms": REFRESH_INTERVAL_S * 1000,
        "previous_query": urlencode(previous) if previous is not None else None,
        "next_query": urlencode(following) if following is not None else None,
    }


@router.get("/")
def worklist(request: Request, user: PageUser, session: SessionDep) -> HTMLResponse:
    return request.app.state.ui_pages.render(request, "worklist.html", _worklist_context(request, session), user=user)


@router.get("/worklist/rows")
def worklist_fragment(request: Request, user: PageUser, session: SessionDep) -> HTMLResponse:
    """The table body alone, for the page's live refresh."""
    context = _worklist_context(request, session)
    return request.app.state.ui_pages.render(request, "worklist_rows.html", context, user=user,
                                             headers={"X-Total-Count": str(context["total"])})


def _study_page(request: Request, session, user, study_uid: str, *, message: str = "", problem: str = "",
                status: int = 200, narrative: str | None = None, comment: str = "") -> HTMLResponse:
    try:
        detail = get_study(session, study_uid)
    except StudyNotFound as exc:
        raise PageRefused(404, "Study not found", str(exc)) from exc
    report = latest_report(session, study_uid)
    record_audit(session, user.name, "study.read", study_uid=study_uid, remote_addr=client_address(request),
                 detail={"via": "dashboard"})
    report_data = None
    if report is not None:
        report_data = report_json(report)
        record_audit(session, user.name, "report.read", study_uid=study_uid, remote_addr=client_address(request),
                     detail={"format": "dashboard", "version": report.version})
    context = {
        "study": detail, "runs": study_runs(session, study_uid), "report": report_data,
        "transcript": (report_data or {}).get("transcript") or {}, "message": message, "problem": problem,
        "draft_narrative": narrative if narrative is not None else (report_data or {}).get("narrative", ""),
        "draft_comment": comment, "study_path": "/ui/studies/" + quote(study_uid),
        "demo_not_verifiable": DEMO_NOT_VERIFIABLE[0].upper() + DEMO_NOT_VERIFIABLE[1:],
        "viewer_links": viewer_links(request.app, study_uid, _first_image_series(detail)),
    }
    return request.app.state.ui_pages.render(request, "study.html", context, user=user, status=status)


def _first_image_series(detail) -> str:
    for series in getattr(detail, "series", None) or []:
        uid = getattr(series, "series_uid", "")
        if uid:
            return uid
    return ""


@router.get("/studies/{study_uid}")
def study_page(study_uid: StudyUid, request: Request, user: PageUser, session: SessionDep,
               done: str = "") -> HTMLResponse:
    return _study_page(request, session, user, study_uid, message=_REVIEW_DONE.get(done, ""))


@router.post("/studies/{study_uid}/review")
def review(study_uid: StudyUid, request: Request, user: PageUser, form: FormFields, session: SessionDep):
    require_csrf(request, form, user, session)
    action = form.get("action", "")
    narrative = form.get("narrative", "")
    comment = form.get("comment", "")
    version = form.get("version", "")
    if action not in {a.value for a in ReviewAction} or not version.isdigit() or len(version) > 9:
        raise PageRefused(400, "Incomplete review", "The review form needs an action and the report version; reload "
                          "the study page and use its buttons.")
    try:
        request.app.state.review.review(
            session, study_uid, user,
            ReviewRequest(action, int(version), narrative if action == "amend" else None, comment or None),
            client_address(request))
    except DemoReportNotVerifiable as exc:
        session.rollback()
        return _study_page(request, session, user, study_uid, status=409, narrative=narrative, comment=comment,
                           problem=f"Not saved: {exc}.")
    except ReviewConflict as exc:
        session.rollback()
        return _study_page(request, session, user, study_uid, status=409, narrative=narrative, comment=comment,
                           problem="Not saved: someone else reviewed this report after you opened it "
                                   f"({exc}). The page now shows the current version; check it and review again.")
    except ReviewError as exc:
        session.rollback()
        return _study_page(request, session, user, study_uid, status=422, narrative=narrative, comment=comment,
                           problem=f"Not saved: {exc}.")
    return RedirectResponse(f"/ui/studies/{quote(study_uid)}?done={action}", status_code=303)

