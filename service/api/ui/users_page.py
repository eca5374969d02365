"""The administrator's users page: who can use m3edge, and the account changes that end access at once.

Disable (every API token revoked, every dashboard session ended), enable, and set a password (every session of that
user ended); each a CSRF-checked form, each audited like the admin API's equivalent under ``/api/v1/admin/users``.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from service.api.deps import SessionDep, client_address
from service.api.routes.admin import user_rows
from service.api.ui.access import FormFields, PageAdmin, PageRefused, require_csrf
from service.security import AccountAction, UnknownUser, change_account, record_audit

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def _users_page(request: Request, session, user, *, message: str = "", problem: str = "",
                status: int = 200) -> HTMLResponse:
    return request.app.state.ui_pages.render(
        request, "users.html", {"users": user_rows(session, request.app.state.sessions.policy), "message": message,
                                "problem": problem},
        user=user, status=status)


def _target(name: str) -> str:
    if not _NAME.match(name):
        raise PageRefused(404, "Unknown user", "Use the buttons on the users page.")
    return name


@router.get("/admin/users")
def users_page(request: Request, user: PageAdmin, session: SessionDep) -> HTMLResponse:
    record_audit(session, user.name, "admin.users.read", remote_addr=client_address(request))
    return _users_page(request, session, user)


def _change(request: Request, session, user, action: AccountAction, name: str, password: str = ""):
    try:
        return change_account(session, user.name, action, _target(name), password=password,
                              remote_addr=client_address(request))
    except UnknownUser as exc:
        raise PageRefused(404, "Unknown user", str(exc)) from exc


@router.post("/admin/users/{name}/disable")
def disable(name: str, request: Request, user: PageAdmin, form: FormFields, session: SessionDep) -> HTMLResponse:
    require_csrf(request, form, user, session)
    if name == user.name:
        return _users_page(request, session, user, status=409,
                           problem="You cannot disable your own account; another administrator can.")
    change = _change(request, session, user, AccountAction.DISABLE, name)
    return _users_page(request, session, user, message=f"{name} is disabled: {change.tokens_revoked} API token(s) "
                       f"revoked and {change.sessions_ended} session(s) ended.")


@router.post("/admin/users/{name}/enable")
def enable(name: str, request: Request, user: PageAdmin, form: FormFields, session: SessionDep) -> HTMLResponse:
    require_csrf(request, form, user, session)
    _change(request, session, user, AccountAction.ENABLE, name)
    return _users_page(request, session, user, message=f"{name} is enabled again (with a new log-in; old API "
                       "tokens stay revoked).")


@router.post("/admin/users/{name}/password")
def password(name: str, request: Request, user: PageAdmin, form: FormFields, session: SessionDep) -> HTMLResponse:
    require_csrf(request, form, user, session)
    secret = form.get("password", "")
    if secret != form.get("confirm", ""):
        return _users_page(request, session, user, status=400, problem="The two passwords differ; nothing changed.")
    if not 10 <= len(secret) <= 256:
        return _users_page(request, session, user, status=400,
                           problem="A password needs 10 to 256 characters; nothing changed.")
    change = _change(request, session, user, AccountAction.PASSWORD, name, secret)
    return _users_page(request, session, user, message=f"The password of {name} is set; {change.sessions_ended} "
                       "session(s) ended.")
