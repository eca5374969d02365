"""Users and their tokens: created by ``m3edge users add`` (and the admin API), looked up for every request."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import ApiToken, Role, User, utcnow
from service.security.credentials import hash_password, new_token, token_digest, verify_password

__all__ = ["Principal", "principal_of", "UserExists", "UnknownUser", "add_user", "find_user", "issue_token",
           "revoke_tokens", "authenticate_token", "authenticate_password"]

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class UserExists(ValueError):
    pass


class UnknownUser(LookupError):
    pass


@dataclass(frozen=True)
class Principal:
    """Who is asking: enough to authorise and to audit, nothing more."""

    user_id: int
    name: str
    role: Role
    display_name: str
    organisation: str

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def principal_of(user: User) -> Principal:
    return Principal(user.id, user.name, Role(user.role), user.display_name or user.name, user.organisation)


def add_user(session: Session, name: str, role: Role | str, *, display_name: str = "", organisation: str = "",
             password: str | None = None) -> tuple[User, str]:
    """Create a user with one API token; returns the user and the token, which is shown once and stored hashed."""
    if not _NAME.match(name):
        raise ValueError(f"user name {name!r}: use 1-64 letters, digits or . _ @ -")
    role = Role(role)
    if session.execute(select(User.id).where(User.name == name)).first():
        raise UserExists(f"user {name!r} already exists")
    user = User(name=name, role=role, display_name=display_name, organisation=organisation,
                password_hash=hash_password(password) if password else "")
    session.add(user)
    session.flush()
    return user, issue_token(session, user, label="created with the user")


def issue_token(session: Session, user: User, label: str = "") -> str:
    token = new_token()
    session.add(ApiToken(user_id=user.id, token_hash=token_digest(token), label=label[:64]))
    session.flush()
    return token


def find_user(session: Session, name: str) -> User:
    """The user called ``name``; UnknownUser otherwise."""
    user = session.execute(select(User).where(User.name == name)).scalar_one_or_none()
    if user is None:
        raise UnknownUser(f"no user {name!r} (`m3edge users list` shows them)")
    return user


def revoke_tokens(session: Session, name: str) -> int:
    """Revoke every API token of the user; returns how many were still valid."""
    count = 0
    for token in find_user(session, name).tokens:
        if token.revoked_at is None:
            token.revoked_at = utcnow()
            count += 1
    return count


def authenticate_token(session: Session, token: str) -> Principal | None:
    row = session.execute(
        select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(ApiToken.token_hash == token_digest(token))
    ).first()
    if row is None:
        return None
    api_token, user = row
    if api_token.revoked_at is not None or user.disabled:
        return None
    api_token.last_used_at = utcnow()
    return principal_of(user)


def authenticate_password(session: Session, name: str, password: str) -> Principal | None:
    user = session.execute(select(User).where(User.name == name)).scalar_one_or_none()
    if user is None or user.disabled or not user.password_hash:
        verify_password(password, "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAA")  # same cost whether or not the user exists
        return None
    return principal_of(user) if verify_password(password, user.password_hash) else None
