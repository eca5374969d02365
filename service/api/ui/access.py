"""Who may open a dashboard page, and the form posts they send: the session cookie, the admin role, CSRF, form bodies.

A page without a valid session cookie redirects to the log-in page (a browser follows it); a reviewer opening an admin
page gets a 403 page; a state-changing form must echo the CSRF token bound to the session cookie. Form bodies are
``application/x-www-form-urlencoded`` only and parsed here (bounded), so the dashboard needs no multipart parser.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.api.deps import SessionDep, client_address, record_denied
from service.db.models import Role
from service.security import Principal, record_audit

__all__ = [
    "PageUser",
    "PageAdmin",
    "FormFields",
    "LoginRequired",
    "PageRefused",
    "require_csrf",
    "safe_next",
    "MAX_FORM_BYTES",
]

MAX_FORM_BYTES = 64 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"


class LoginRequired(Exception):
    """No valid session: the browser goes to the log-in page and comes back to ``next_path`` afterwards."""

    def __init__(self, next_path: str) -> None:
        super().__init__("log in first")
        self.next_path = next_path

    @property
    def location(self) -> str:
        return "/ui/login?next=" + quote(safe_next(self.next_path), safe="/")


class PageRefused(Exception):
    """An HTML error page: status, a title and what the person can do about it."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


def safe_next(path: str | None) -> str:
    """Only a dashboard or viewer path of this site: no open redirect to another host."""
    if (not path or not path.startswith(("/ui/", "/viewer/")) or path.startswith("//") or "\\" in path
            or "\n" in path):
        return "/ui/"
    return path


def page_user(request: Request, session: SessionDep) -> Principal:
    """The session's user (checked here, or already by the request gate before it let a form in); a browser without
    a valid session goes to the log-in page."""
    principal = getattr(request.state, "page_user", None) or request.app.state.sessions.principal(request, session)
    if principal is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target if request.method == "GET" else "/ui/")
    request.state.principal = principal
    return principal


PageUser = Annotated[Principal, Depends(page_user)]


def page_admin(request: Request, user: PageUser, session: SessionDep) -> Principal:
    if user.role is not Role.ADMIN:
        record_denied(request, session, user)
        raise PageRefused(403, "Administrators only", "This page needs the admin role. Ask an administrator if you "
                          "need to see the node's health.")
    return user


PageAdmin = Annotated[Principal, Depends(page_admin)]


async def form_fields(request: Request) -> dict[str, str]:
    """The posted form's fields (the last value of each), refused when it is not a small url-encoded form.

    The request gate (``service.api.request_gate``) has already bounded the body: a chunked one stops at its limit."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type and request.headers.get("content-length", "0") == "0":
        return {}  # an empty post (a button without fields): the CSRF check refuses it
    if content_type != FORM_TYPE:
        raise PageRefused(415, "Not a form", f"post the form as {FORM_TYPE} (use the dashboard's own pages)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise PageRefused(413, "Form too large", f"a dashboard form is at most {MAX_FORM_BYTES // 1024} KiB")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise PageRefused(413, "Form too large", f"a dashboard form is at most {MAX_FORM_BYTES // 1024} KiB")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=32)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PageRefused(400, "Unreadable form", "the form was not UTF-8 url-encoded text") from exc
    return {key: values[-1] for key, values in parsed.items()}


FormFields = Annotated[dict[str, str], Depends(form_fields)]


def require_csrf(request: Request, form: dict[str, str], user: Principal, session: Session) -> None:
    """Refuse (and audit) a state-changing post whose CSRF token is not the one bound to the session cookie."""
    if request.app.state.sessions.check_csrf(request, form.get("csrf_token", "")):
        return
    record_audit(session, user.name, "ui.csrf_refused", target=request.url.path, outcome="denied",
                 remote_addr=client_address(request))
    session.commit()
    raise PageRefused(403, "Form refused", "The form's security token is missing or out of date. Reload the page "
                      "and submit it again.")
