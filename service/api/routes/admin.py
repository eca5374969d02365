"""Administration: users and tokens, the audit log, destinations, routing rules, the pipeline's queues."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from service.api.deps import AdminUser, SessionDep, client_address
from service.api.problems import Problem
from service.db.models import Role, User
from service.security import (
    AccountAction,
    SessionPolicy,
    UnknownUser,
    UserExists,
    add_user,
    audit_csv,
    change_account,
    live_session_counts,
    query_audit,
    record_audit,
    revoke_tokens,
)

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])

USER_NAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"
UserName = Annotated[str, Path(pattern=USER_NAME_PATTERN, max_length=64, description="The user's log-in name")]


class NewUser(BaseModel):
    name: Annotated[str, Field(pattern=USER_NAME_PATTERN)]
    role: Role
    display_name: Annotated[str, Field(max_length=128)] = ""
    organisation: Annotated[str, Field(max_length=128)] = ""
    password: Annotated[str | None, Field(min_length=10, max_length=256)] = None


class NewPassword(BaseModel):
    password: Annotated[str, Field(min_length=10, max_length=256, description="The new dashboard password")]


def user_rows(session, policy: SessionPolicy) -> list[dict]:
    """Every user with what it holds (never its secrets): the admin API's list and the dashboard's users page."""
    open_sessions = live_session_counts(session, policy)
    return [
        {"name": u.name, "role": u.role.value, "display_name": u.display_name, "organisation": u.organisation,
         "disabled": u.disabled, "active_tokens": sum(1 for t in u.tokens if t.revoked_at is None),
         "has_password": bool(u.password_hash), "sessions": open_sessions.get(u.id, 0)}
        for u in session.execute(select(User).order_by(User.name)).scalars()
    ]


@router.get("/users", summary="Users, their roles, active API tokens and live dashboard sessions (never secrets)")
def list_users(admin: AdminUser, session: SessionDep, request: Request) -> list[dict]:
    return user_rows(session, request.app.state.sessions.policy)


@router.post("/users", status_code=201, summary="Create a user; the response carries its API token, shown once")
def create_user(body: NewUser, admin: AdminUser, session: SessionDep, request: Request) -> dict:
    try:
        user, token = add_user(session, body.name, body.role, display_name=body.display_name,
                               organisation=body.organisation, password=body.password)
    except UserExists as exc:
        raise Problem(409, "user exists", str(exc)) from exc
    except ValueError as exc:
        raise Problem(422, "invalid user", str(exc)) from exc
    record_audit(session, admin.name, "admin.user.create", target=user.name, remote_addr=client_address(request),
                 detail={"role": body.role.value})
    return {"name": user.name, "role": user.role.value, "token": token}


@router.post("/users/{name}/revoke-tokens", summary="Revoke every API token of a user")
def revoke(name: UserName, admin: AdminUser, session: SessionDep, request: Request) -> dict:
    try:
        count = revoke_tokens(session, name)
    except UnknownUser as exc:
        raise Problem(404, "unknown user", str(exc)) from exc
    record_audit(session, admin.name, "admin.user.revoke_tokens", target=name, remote_addr=client_address(request),
                 detail={"revoked": count})
    return {"name": name, "revoked": count}


def _change_account(request: Request, session, admin, action: AccountAction, name: str, password: str = ""):
    try:
        return change_account(session, admin.name, action, name, password=password,
                              remote_addr=client_address(request))
    except UnknownUser as exc:
        raise Problem(404, "unknown user", str(exc)) from exc


@router.post("/users/{name}/disable",
             summary="Disable a user: every API token revoked and every dashboard session ended at once")
def disable_account(name: UserName, admin: AdminUser, session: SessionDep, request: Request) -> dict:
    if name == admin.name:
        raise Problem(409, "cannot disable yourself", "another administrator (or `m3edge users disable`) can")
    change = _change_account(request, session, admin, AccountAction.DISABLE, name)
    return {"name": name, "disabled": True, **change.as_detail()}


@router.post("/users/{name}/enable", summary="Enable a disabled user (its old tokens and sessions stay ended)")
def enable_account(name: UserName, admin: AdminUser, session: SessionDep, request: Request) -> dict:
    _change_account(request, session, admin, AccountAction.ENABLE, name)
    return {"name": name, "disabled": False}


@router.put("/users/{name}/password", summary="Set a user's dashboard password; ends every session of that user")
def change_password(name: UserName, body: NewPassword, admin: AdminUser, session: SessionDep, request: Request) -> dict:
    change = _change_account(request, session, admin, AccountAction.PASSWORD, name, body.password)
    return {"name": name, **change.as_detail()}


@router.get("/audit", summary="The audit log, newest first (JSON, or CSV with format=csv)")
def audit(
    admin: AdminUser,
    session: SessionDep,
    request: Request,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    study_uid: Annotated[str | None, Query(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)] = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    format: Literal["json", "csv"] = "json",
):
    events, total = query_audit(session, actor=actor, action=action, study_uid=study_uid, since=since, limit=limit,
                                offset=offset)
    record_audit(session, admin.name, "admin.audit.read", remote_addr=client_address(request),
                 detail={"format": format, "count": len(events)})
    if format == "csv":
        return Response(audit_csv(events), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="m3edge-audit.csv"'})
    return {
        "total": total, "limit": limit, "offset": offset,
        "items": [{"id": e.id, "at": e.at.isoformat(), "actor": e.actor, "action": e.action, "study_uid": e.study_uid,
                   "target": e.target, "outcome": e.outcome, "remote_addr": e.remote_addr, "detail": e.detail}
                  for e in events],
    }


@router.get("/destinations", summary="Where results are delivered by default (a route's own destinations win)")
def destinations(admin: AdminUser, request: Request) -> list[dict]:
    from service.destinations import DestinationsStore

    return [{"address": str(d), "ae_title": d.ae_title, "host": d.host, "port": d.port}
            for d in DestinationsStore(request.app.state.settings).load()]


class DestinationsBody(BaseModel):
    destinations: Annotated[list[Annotated[str, Field(max_length=300)]], Field(max_length=64)]


@router.put("/destinations", summary="Replace the default destinations (AE@host:port each; workers use them at once)")
def replace_destinations(body: DestinationsBody, admin: AdminUser, session: SessionDep, request: Request) -> list[dict]:
    from service.destinations import DestinationsStore

    try:
        saved = DestinationsStore(request.app.state.settings).save(body.destinations)
    except ValueError as exc:
        raise Problem(422, "invalid destinations", str(exc)) from exc
    record_audit(session, admin.name, "admin.destinations.replace", remote_addr=client_address(request),
                 detail={"destinations": [str(d) for d in saved]})
    return [{"address": str(d), "ae_title": d.ae_title, "host": d.host, "port": d.port} for d in saved]


@router.get("/routing-rules", summary="The routing rules in force: where they come from, the YAML, the parsed rules")
def routing_rules(admin: AdminUser, request: Request) -> dict:
    store = request.app.state.routing_rules
    rules = store.load()
    return {"source": store.describe(), "yaml": store.text(), "rules": [r.model_dump(mode="json") for r in rules.rules]}


class RoutingRulesBody(BaseModel):
    yaml: Annotated[str, Field(min_length=1, max_length=200_000, description="The whole rules file (YAML)")]


@router.put("/routing-rules", summary="Replace the routing rules (validated first; workers pick them up at once)")
def replace_routing_rules(body: RoutingRulesBody, admin: AdminUser, session: SessionDep, request: Request) -> dict:
    from service.routing import RoutingRulesError

    store = request.app.state.routing_rules
    try:
        rules = store.save(body.yaml)
    except RoutingRulesError as exc:
        record_audit(session, admin.name, "admin.routing_rules.replace", outcome="invalid",
                     remote_addr=client_address(request))
        session.commit()
        raise Problem(422, "invalid routing rules", str(exc)) from exc
    record_audit(session, admin.name, "admin.routing_rules.replace", target=str(store.writable_path),
                 remote_addr=client_address(request), detail={"rules": [r.name for r in rules.rules]})
    return {"source": store.describe(), "rules": [r.name for r in rules.rules]}


@router.get("/workers", summary="Workers seen by the pipeline: what each ran last and what it runs now")
def workers(admin: AdminUser, session: SessionDep) -> list[dict]:
    from sqlalchemy import func

    from service.db.models import StageRun, StageStatus

    rows = session.execute(
        select(StageRun.worker, func.max(StageRun.started_at), func.count())
        .where(StageRun.worker != "").group_by(StageRun.worker).order_by(StageRun.worker)
    ).all()
    running = dict(session.execute(
        select(StageRun.worker, func.count()).where(StageRun.status == StageStatus.RUNNING).group_by(StageRun.worker)
    ).all())
    return [{"name": name, "last_started_at": last.isoformat() if last else None, "stages_run": n,
             "running_now": running.get(name, 0)} for name, last, n in rows]


@router.get("/queues", summary="Pipeline stages by state")
def queues(admin: AdminUser, request: Request) -> dict:
    counts = request.app.state.intake.ledger.stage_counts()
    by_stage: dict[str, dict[str, int]] = {}
    for (stage, status), n in counts.items():
        by_stage.setdefault(stage, {})[status] = n
    return {"stages": by_stage}
