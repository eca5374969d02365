"""Log-in and log-out of the dashboard: a password form, a rate limit on failures, an audit event for every attempt.

The log-in form itself carries a CSRF token (double-submit: a SameSite=Strict cookie that the form echoes), so another
site cannot log a browser in under an account of its choosing. Each attempt is recorded before its password is checked
(:class:`service.security.login_limits.LoginThrottle`), so concurrent guesses cannot pass the limit. Success opens a
session in the database and sets its cookie (:class:`service.api.sessions.DashboardSessions`); log-out ends that
session for every copy of the cookie.
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from service.api.deps import SessionDep, client_address
from service.api.ui.access import FormFields, PageUser, require_csrf, safe_next
from service.security import authenticate_password, record_audit
from service.security.login_limits import LOGIN_ACTION, LoginOutcome

__all__ = ["router", "LOGIN_CSRF_COOKIE"]

router = APIRouter(prefix="/ui", include_in_schema=False)

LOGIN_CSRF_COOKIE = "m3edge_login_csrf"
_LOGIN_CSRF_LIFETIME_S = 3600


def _login_page(request: Request, *, next_path: str, message: str = "", status: int = 200, name: str = "",
                headers: dict[str, str] | None = None):
    token = secrets.token_urlsafe(24)
    response = request.app.state.ui_pages.render(
        request, "login.html", {"next_path": safe_next(next_path), "login_csrf": token, "message": message,
                                "name": name},
        status=status, headers=headers)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=_LOGIN_CSRF_LIFETIME_S, httponly=True, samesite="strict",
                        secure=request.app.state.sessions.cookie_secure(request), path="/ui/login")
    return response


@router.get("/login")
def login_form(request: Request, session: SessionDep, next: str = "/ui/"):
    if request.app.state.sessions.principal(request, session) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _login_page(request, next_path=next)


@router.post("/login")
def login(request: Request, form: FormFields, session: SessionDep):
    name = form.get("username", "").strip()[:64]
    password = form.get("password", "")
    next_path = safe_next(form.get("next"))
    address = client_address(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(expected, form.get("csrf_token", "")):
        return _login_page(request, next_path=next_path, name=name, status=403,
                           message="The log-in form expired or did not come from this page; please try again.")
    if not name or not password:
        return _login_page(request, next_path=next_path, name=name, status=400, message="Enter your name and password.")
    throttle = request.app.state.login_throttle
    ticket = throttle.admit(session, name, address)  # recorded and committed before the password is checked
    if ticket.lockout is not None:
        record_audit(session, name, LOGIN_ACTION, outcome=LoginOutcome.LOCKED.value, remote_addr=address,
                     detail={"scope": ticket.lockout.scope})
        return _login_page(request, next_path=next_path, name=name, status=429, message=ticket.lockout.message,
                           headers={"Retry-After": str(ticket.lockout.retry_after_s)})
    principal = authenticate_password(session, name, password)
    if principal is None:
        throttle.finish(session, ticket, LoginOutcome.FAILURE)
        record_audit(session, name, LOGIN_ACTION, outcome=LoginOutcome.FAILURE.value, remote_addr=address)
        return _login_page(request, next_path=next_path, name=name, status=401,
                           message="Wrong name or password (or no dashboard password is set for this user).")
    throttle.finish(session, ticket, LoginOutcome.SUCCESS)
    record_audit(session, principal.name, LOGIN_ACTION, outcome=LoginOutcome.SUCCESS.value, remote_addr=address)
    response = RedirectResponse(next_path, status_code=303)
    request.app.state.sessions.login(request, response, session, principal, address)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui/login")
    return response


@router.post("/logout")
def logout(request: Request, user: PageUser, form: FormFields, session: SessionDep):
    require_csrf(request, form, user, session)
    record_audit(session, user.name, "ui.logout", remote_addr=client_address(request))
    response = RedirectResponse("/ui/login", status_code=303)
    request.app.state.sessions.logout(request, response, session)
    return response
