"""Dependencies every route takes: settings, a database session per request, the caller, the caller's role."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.api.problems import Problem
from service.config import Settings
from service.db.models import Role
from service.db.session import session_scope
from service.security import Principal, authenticate_token, record_audit

__all__ = ["SettingsDep", "SessionDep", "CurrentUser", "AdminUser", "client_address", "get_session", "current_user",
           "authenticate_caller", "check_admin", "record_denied"]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.session_factory) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]  # commit before the response is sent


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def authenticate_caller(request: Request, session: Session) -> Principal:
    """A bearer token (API) or the dashboard's session cookie (with its CSRF header when the method changes state);
    raises Problem 401 (403 for a missing CSRF token). Reads headers only, never the body, and commits the token's
    last use as its own unit of work (no write lock held through the request)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    principal = None
    if scheme.lower() == "bearer" and token.strip():
        principal = authenticate_token(session, token.strip())
    elif not header:
        sessions = request.app.state.sessions
        principal = sessions.principal(request, session)
        if principal is not None and request.method not in _SAFE_METHODS:
            # A browser session changing state through the JSON API must prove it is our page (CSRF).
            if not sessions.check_csrf(request, request.headers.get("x-csrf-token", "")):
                raise Problem(403, "CSRF token missing or wrong",
                              "send the session's CSRF token in the X-CSRF-Token header (or use a bearer token)")
    if principal is None:
        raise Problem(401, "not authenticated", "send 'Authorization: Bearer <token>' (m3edge users add prints one)",
                      headers={"WWW-Authenticate": "Bearer"})
    session.commit()
    return principal


def current_user(request: Request, session: SessionDep) -> Principal:
    """The caller; checked here, or already by the request gate before it let the request's body in."""
    principal = getattr(request.state, "api_caller", None) or authenticate_caller(request, session)
    request.state.principal = principal
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


def record_denied(request: Request, session: Session, user: Principal) -> None:
    """Audit a refused request and commit it at once (the request itself is about to fail)."""
    record_audit(session, user.name, "access.denied", target=request.url.path, outcome="denied",
                 remote_addr=client_address(request))
    session.commit()


def check_admin(request: Request, session: Session, user: Principal) -> None:
    """Problem 403 (audited) unless the caller has the admin role."""
    if user.role is not Role.ADMIN:
        record_denied(request, session, user)
        raise Problem(403, "forbidden", "this needs the admin role")


def require_admin(request: Request, user: CurrentUser, session: SessionDep) -> Principal:
    check_admin(request, session, user)
    return user


AdminUser = Annotated[Principal, Depends(require_admin)]
