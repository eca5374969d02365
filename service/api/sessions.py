"""Dashboard log-in sessions: an HMAC-signed cookie (HttpOnly, SameSite=Strict) carrying the user, an expiry and a
CSRF token that every state-changing form must echo. The signing key lives in HOME (0600) unless configured."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from fastapi import Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import User
from service.security.users import Principal, principal_of

__all__ = ["SessionCookies", "COOKIE_NAME", "load_signing_key"]

COOKIE_NAME = "m3edge_session"


def load_signing_key(home: Path) -> bytes:
    """The key in ``HOME/session.key``, created (random, mode 0600) on first use."""
    path = home / "session.key"
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    home.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex())
    return key


class SessionCookies:
    def __init__(self, key: bytes, lifetime_s: int = 8 * 3600, secure: bool = False) -> None:
        self.key = key
        self.lifetime_s = lifetime_s
        self.secure = secure

    def _sign(self, payload: bytes) -> str:
        mac = hmac.new(self.key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(payload).decode() + "." + base64.urlsafe_b64encode(mac).decode()

    def _read(self, request: Request) -> dict | None:
        value = request.cookies.get(COOKIE_NAME, "")
        body, _, mac = value.partition(".")
        try:
            payload = base64.urlsafe_b64decode(body)
            expected = hmac.new(self.key, payload, hashlib.sha256).digest()
            if not hmac.compare_digest(expected, base64.urlsafe_b64decode(mac)):
                return None
            data = json.loads(payload)
        except (ValueError, TypeError):
            return None
        if not isinstance(data, dict) or data.get("exp", 0) < time.time():
            return None
        return data

    def login(self, response: Response, principal: Principal, password_hash: str) -> str:
        """Set the cookie; returns the CSRF token for forms."""
        csrf = secrets.token_urlsafe(24)
        payload = json.dumps({"uid": principal.user_id, "exp": int(time.time()) + self.lifetime_s, "csrf": csrf,
                              # a changed password ends every session made with the old one
                              "pw": hashlib.sha256(password_hash.encode()).hexdigest()[:16]}).encode()
        response.set_cookie(COOKIE_NAME, self._sign(payload), max_age=self.lifetime_s, httponly=True,
                            samesite="strict", secure=self.secure, path="/")
        return csrf

    @staticmethod
    def logout(response: Response) -> None:
        response.delete_cookie(COOKIE_NAME, path="/")

    def principal(self, request: Request, session: Session) -> Principal | None:
        data = self._read(request)
        if data is None:
            return None
        user = session.execute(select(User).where(User.id == data.get("uid"))).scalar_one_or_none()
        if user is None or user.disabled or not user.password_hash:
            return None
        if hashlib.sha256(user.password_hash.encode()).hexdigest()[:16] != data.get("pw"):
            return None
        return principal_of(user)

    def csrf_token(self, request: Request) -> str:
        data = self._read(request)
        return data.get("csrf", "") if data else ""

    def check_csrf(self, request: Request, submitted: str) -> bool:
        expected = self.csrf_token(request)
        return bool(expected) and hmac.compare_digest(expected, submitted or "")
