"""Dashboard log-in sessions over HTTP: the cookie that carries a session id, and the CSRF token bound to it.

The session itself lives in the database (:mod:`service.security.sessions`): checked on every request, ended at
log-out, when its user is disabled or its password changes, after ``SESSION_IDLE_SECONDS`` without use and at the
latest ``SESSION_LIFETIME_SECONDS`` after log-in. The cookie is ``HttpOnly``, ``SameSite=Strict`` and ``Secure`` when
the request came over HTTPS (``SESSION_COOKIE_SECURE=auto``: uvicorn's own TLS, or a trusted proxy's
``X-Forwarded-Proto``) or always (``always``). Every state-changing form echoes the session's CSRF token, an HMAC of
the session id under the key in ``HOME/session.key`` (0600), so pages need no database read to render it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from datetime import timedelta
from pathlib import Path

from fastapi import Request, Response
from sqlalchemy.orm import Session

from dicom_node.private_files import SECRET_FILE_MODE, make_private_dirs
from service.config import CookieSecurity, Settings
from service.db.models import SessionEnd
from service.security import Principal, SessionPolicy, end_session, open_session, session_principal

__all__ = ["DashboardSessions", "COOKIE_NAME", "load_signing_key"]

COOKIE_NAME = "m3edge_session"


def load_signing_key(home: Path) -> bytes:
    """The key in ``HOME/session.key``, created (random, mode 0600) on first use."""
    path = home / "session.key"
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    make_private_dirs(home)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex())
    return key


class DashboardSessions:
    def __init__(self, key: bytes, policy: SessionPolicy, secure: CookieSecurity | str = CookieSecurity.AUTO) -> None:
        self.key = key
        self.policy = policy
        self.secure = CookieSecurity(secure)

    @classmethod
    def from_settings(cls, settings: Settings) -> DashboardSessions:
        """``SESSION_IDLE_SECONDS``, ``SESSION_LIFETIME_SECONDS``, ``SESSION_COOKIE_SECURE``; the key in HOME."""
        policy = SessionPolicy(idle=timedelta(seconds=settings.session_idle_seconds),
                               lifetime=timedelta(seconds=settings.session_lifetime_seconds))
        return cls(load_signing_key(settings.home), policy, settings.session_cookie_secure)

    def cookie_secure(self, request: Request) -> bool:
        """Whether a cookie set in answer to ``request`` is marked Secure."""
        return self.secure is CookieSecurity.ALWAYS or request.url.scheme == "https"

    @staticmethod
    def _session_id(request: Request) -> str:
        value = request.cookies.get(COOKIE_NAME, "")
        return value if 0 < len(value) <= 128 else ""

    def login(self, request: Request, response: Response, db: Session, principal: Principal,
              remote_addr: str = "") -> str:
        """Open a session in the database and set its cookie; returns the session's CSRF token for forms. A session
        the browser still held is ended: each log-in gets a fresh id."""
        previous = self._session_id(request)
        if previous:
            end_session(db, previous, SessionEnd.LOGOUT)
        session_id = open_session(db, principal, self.policy, remote_addr)
        lifetime = int(self.policy.lifetime / timedelta(seconds=1))
        response.set_cookie(COOKIE_NAME, session_id, max_age=lifetime, httponly=True, samesite="strict",
                            secure=self.cookie_secure(request), path="/")
        return self._csrf_of(session_id)

    def logout(self, request: Request, response: Response, db: Session) -> None:
        """End the session in the database (every copy of the cookie stops working) and delete the cookie."""
        session_id = self._session_id(request)
        if session_id:
            end_session(db, session_id, SessionEnd.LOGOUT)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict",
                               secure=self.cookie_secure(request))

    def principal(self, request: Request, db: Session) -> Principal | None:
        """The user of the request's session, or None (no cookie, or the session is not valid any more)."""
        return session_principal(db, self._session_id(request), self.policy)

    def _csrf_of(self, session_id: str) -> str:
        mac = hmac.new(self.key, b"csrf\0" + session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def csrf_token(self, request: Request) -> str:
        session_id = self._session_id(request)
        return self._csrf_of(session_id) if session_id else ""

    def check_csrf(self, request: Request, submitted: str) -> bool:
        expected = self.csrf_token(request)
        return bool(expected) and hmac.compare_digest(expected, submitted or "")
