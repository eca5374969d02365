"""The reviewer's pages: the worklist (with a live-refreshed table body) and a study with its draft and review form."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dicom_node.results import clean_text
from service.api.deps import SessionDep, client_address
from service.api.routes.reports import report_json
from service.api.routes.studies import StudyUid
from service.api.ui.access import FormFields, PageRefused, PageUser, require_csrf
from service.api.ui.rendering import PAGE_HEADERS
from service.api.ui.study_view import (
    PROJECTION_MODALITIES,
    conversation,
    finding_rows,
    overlay_legend,
    radiograph_png,
)
from service.api.ui.viewer_links import viewer_links
from service.api.ui.worklist import PAGE_SIZE, STATE_CHOICES, WorklistFilters, worklist_rows
from service.catalog import StudyNotFound, get_study, study_runs
from service.patient_context import backfill_patient_context
from service.review import (
    DEMO_NOT_VERIFIABLE,
    DemoReportNotVerifiable,
    FindingCorrection,
    ReviewAction,
    ReviewConflict,
    ReviewError,
    ReviewRequest,
    latest_report,
)
from service.security import record_audit
from service.worklist import next_awaiting_review

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

REFRESH_INTERVAL_S = 5
_REVIEW_DONE = {"approve": "Approved: a verified SR was written and queued for delivery.",
                "amend": "Amended: a verified SR with your corrections was written and queued for delivery.",
                "reject": "Rejected: the reason was recorded."}


WORKLIST_COLUMNS = [("priority", "Priority"), ("received", "Received"), ("study_date", "Study date"),
                    ("patient_name", "Patient"), ("patient_id", "Patient ID"), ("modality", "Modality"),
                    ("description", "Description"), ("state", "State")]


def _worklist_context(request: Request, session, user, *, refresh: bool = False) -> dict:
    filters = WorklistFilters.from_query(dict(request.query_params))
    rows, total = worklist_rows(session, filters)
    unrecorded = [r.study.study_uid for r in rows if r.study.patient_id is None]
    if unrecorded and backfill_patient_context(session, request.app.state.settings.spool_dir, unrecorded):
        session.commit()
        rows, total = worklist_rows(session, filters)  # studies received before 0009, filled from their files
    # The rows carry patient context: who saw which studies, and whether they searched (never what they typed).
    record_audit(session, user.name, "worklist.refresh" if refresh else "worklist.read",
                 remote_addr=client_address(request),
                 detail={"studies": [r.study.study_uid for r in rows], "state": filters.state,
                         "searched": bool(filters.search), "offset": filters.offset})
    session.commit()
    previous = filters.query_args(offset=max(0, filters.offset - PAGE_SIZE)) if filters.offset else None
    following = filters.query_args(offset=filters.offset + PAGE_SIZE) if filters.offset + PAGE_SIZE < total else None
    return {
        "filters": filters, "rows": rows, "total": total, "states": STATE_CHOICES, "columns": WORKLIST_COLUMNS,
        "refresh_query": urlencode(filters.query_args()), "refresh_interval_ms": REFRESH_INTERVAL_S * 1000,
        "previous_query": urlencode(previous) if previous is not None else None,
        "next_query": urlencode(following) if following is not None else None,
    }


@router.get("/")
def worklist(request: Request, user: PageUser, session: SessionDep) -> HTMLResponse:
    return request.app.state.ui_pages.render(request, "worklist.html", _worklist_context(request, session, user),
                                             user=user)


@router.get("/worklist/rows")
def worklist_fragment(request: Request, user: PageUser, session: SessionDep) -> HTMLResponse:
    """The table body alone, for the page's live refresh."""
    context = _worklist_context(request, session, user, refresh=True)
    return request.app.state.ui_pages.render(request, "worklist_rows.html", context, user=user,
                                             headers={"X-Total-Count": str(context["total"])})


def _radiograph_path(request: Request, session, study_uid: str):
    """The first received instance of the study's first projection radiograph series (CR, DX), or None."""
    from sqlalchemy import select

    from service.db.models import Instance, Series, Study

    row = session.execute(
        select(Instance.path).join(Series, Series.id == Instance.series_id).join(Study, Study.id == Series.study_id)
        .where(Study.study_uid == study_uid, Series.modality.in_(sorted(PROJECTION_MODALITIES)),
               Instance.conflict.is_(False), Instance.other_patient.is_(False))
        .order_by(Series.series_number, Series.id, Instance.id).limit(1)
    ).first()
    if row is None:
        return None
    spool = request.app.state.settings.spool_dir.resolve()
    path = (spool / row[0]).resolve()
    return path if path.is_relative_to(spool) and path.is_file() else None


def _study_page(request: Request, session, user, study_uid: str, *, message: str = "", problem: str = "",
                status: int = 200, narrative: str | None = None, comment: str = "") -> HTMLResponse:
    try:
        detail = get_study(session, study_uid)
        if detail.summary.patient_id is None and backfill_patient_context(
                session, request.app.state.settings.spool_dir, [study_uid]):
            session.commit()
            detail = get_study(session, study_uid)  # received before 0009: filled from its files
    except StudyNotFound as exc:
        raise PageRefused(404, "Study not found", str(exc)) from exc
    report = latest_report(session, study_uid)
    record_audit(session, user.name, "study.read", study_uid=study_uid, remote_addr=client_address(request),
                 detail={"via": "dashboard", "patient_context": True})
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
        "findings": finding_rows((report_data or {}).get("findings")),
        "conversation": conversation((report_data or {}).get("transcript")),
        "legend": overlay_legend((report_data or {}).get("transcript")),
        "radiograph": _radiograph_path(request, session, study_uid) is not None,
        "viewer_links": viewer_links(request.app, study_uid, _first_image_series(detail)),
    }
    return request.app.state.ui_pages.render(request, "study.html", context, user=user, status=status)


@router.get("/studies/{study_uid}/radiograph.png")
def radiograph(study_uid: StudyUid, request: Request, user: PageUser, session: SessionDep) -> Response:
    """The study's projection radiograph as a picture for the page (an image of the patient: audited)."""
    path = _radiograph_path(request, session, study_uid)
    if path is None:
        raise PageRefused(404, "No radiograph", "This study holds no CR or DX image.")
    try:
        picture = radiograph_png(path)
    except Exception as exc:  # noqa: BLE001 - an undecodable image: the page says so, the reason without patient data
        raise PageRefused(404, "Radiograph not shown", f"The image cannot be shown here ({exc.__class__.__name__}); "
                          "open it in a viewer.") from exc
    record_audit(session, user.name, "study.image.read", study_uid=study_uid, remote_addr=client_address(request),
                 detail={"via": "dashboard", "what": "radiograph"})
    return Response(picture, media_type="image/png", headers={**PAGE_HEADERS, "Cache-Control": "no-store"})


@router.get("/next")
def next_study(request: Request, user: PageUser, session: SessionDep, after: str = "") -> RedirectResponse:
    """The next study awaiting review (urgent first, then the oldest), or the worklist when none is left."""
    following = next_awaiting_review(session, after[:64] or None)
    if following is None:
        return RedirectResponse("/ui/?empty=1", status_code=303)
    return RedirectResponse("/ui/studies/" + quote(following), status_code=303)


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


MAX_FINDING_FIELDS = 256


def _finding_corrections(form: dict[str, str]) -> tuple[list[FindingCorrection], list[dict]]:
    """The per-finding fields of the review form (``finding-N-name``, ``-verdict``, ``-note``): the corrections, and
    every row as sent (to carry them through the confirmation step)."""
    corrections, rows = [], []
    for index in range(MAX_FINDING_FIELDS):
        name = form.get(f"finding-{index}-name")
        if name is None:
            break
        verdict = form.get(f"finding-{index}-verdict", "")
        note = form.get(f"finding-{index}-note", "").strip()
        rows.append({"index": index, "name": name, "verdict": verdict, "note": note})
        present = {"present": True, "absent": False}.get(verdict)
        if present is not None or note:
            corrections.append(FindingCorrection(name[:64], present, clean_text(note)[:1024]))
    return corrections, rows


@router.post("/studies/{study_uid}/review")
def review(study_uid: StudyUid, request: Request, user: PageUser, form: FormFields, session: SessionDep):
    """First post: the confirmation page showing what will be sent to PACS; the confirmed post does it."""
    require_csrf(request, form, user, session)
    action = form.get("action", "")
    narrative = form.get("narrative", "")
    comment = form.get("comment", "")
    version = form.get("version", "")
    if action not in {a.value for a in ReviewAction} or not version.isdigit() or len(version) > 9:
        raise PageRefused(400, "Incomplete review", "The review form needs an action and the report version; reload "
                          "the study page and use its buttons.")
    try:
        corrections, finding_fields = _finding_corrections(form)
        review_request = ReviewRequest(action, int(version), narrative if action == "amend" else None,
                                       comment or None, tuple(corrections) if action == "amend" else ())
        if form.get("confirmed") != "yes":
            preview = request.app.state.review.preview(session, study_uid, user, review_request)
            record_audit(session, user.name, "review.preview", study_uid=study_uid,
                         remote_addr=client_address(request), detail={"action": action, "version": int(version)})
            return request.app.state.ui_pages.render(request, "review_confirm.html", {
                "preview": preview, "study_uid": study_uid, "study_path": "/ui/studies/" + quote(study_uid),
                "action": action, "version": version, "narrative": narrative, "comment": comment,
                "finding_fields": finding_fields,
            }, user=user)
        request.app.state.review.review(session, study_uid, user, review_request, client_address(request))
    except DemoReportNotVerifiable as exc:
        session.rollback()
        return _study_page(request, session, user, study_uid, status=409, narrative=narrative, comment=comment,
                           problem=f"Not saved: {exc}.")
    except ReviewConflict as exc:
        session.rollback()
        return _study_page(request, session, user, study_uid, status=409, narrative=narrative, comment=comment,
                           problem="Not saved: someone else reviewed this report after you opened it "
                                   f"({exc}). The page now shows the current version; check it and review again.")
    except (ReviewError, ValueError, TypeError) as exc:
        session.rollback()
        return _study_page(request, session, user, study_uid, status=422, narrative=narrative, comment=comment,
                           problem=f"Not saved: {exc}.")
    return RedirectResponse(f"/ui/studies/{quote(study_uid)}?done={action}", status_code=303)

