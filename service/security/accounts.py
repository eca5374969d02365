"""What an administrator does to an account, and what each change ends at once.

- Disabling a user revokes every API token and ends every dashboard session it has: nothing it holds works on its next
  request. Enabling it again brings none of them back (issue a new token; the user logs in again).
- Changing a password ends every dashboard session of the user (API tokens are separate credentials and stay).

The callers (``m3edge users``, the admin API, the dashboard) audit each change under their own actor.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from service.db.models import SessionEnd
from service.security.credentials import hash_password
from service.security.sessions import end_sessions_of
from service.security.users import find_user, revoke_tokens

__all__ = ["AccountChange", "disable_user", "enable_user", "set_password"]


@dataclass(frozen=True)
class AccountChange:
    """What a change ended: API tokens revoked and dashboard sessions closed."""

    name: str
    tokens_revoked: int = 0
    sessions_ended: int = 0

    def as_detail(self) -> dict[str, int]:
        return {"tokens_revoked": self.tokens_revoked, "sessions_ended": self.sessions_ended}


def disable_user(session: Session, name: str) -> AccountChange:
    """Refuse the user from now on: revoke its tokens and end its sessions (in the caller's transaction)."""
    user = find_user(session, name)
    user.disabled = True
    tokens = revoke_tokens(session, name)
    return AccountChange(name, tokens, end_sessions_of(session, user.id, SessionEnd.DISABLED))


def enable_user(session: Session, name: str) -> AccountChange:
    """Let a disabled user log in again (with its password; old tokens and sessions stay ended)."""
    find_user(session, name).disabled = False
    return AccountChange(name)


def set_password(session: Session, name: str, password: str) -> AccountChange:
    """Set the dashboard password (ValueError when it is too short) and end every session made with the old one."""
    user = find_user(session, name)
    user.password_hash = hash_password(password)
    return AccountChange(name, 0, end_sessions_of(session, user.id, SessionEnd.PASSWORD))
