"""What an administrator does to an account, and what each change ends at once.

- Disabling a user revokes every API token and ends every dashboard session it has: nothing it holds works on its next
  request. Enabling it again brings none of them back (issue a new token; the user logs in again).
- Changing a password ends every dashboard session of the user (API tokens are separate credentials and stay).

``m3edge users``, the admin API and the dashboard all go through :func:`change_account`, which applies a change and
records it in the audit log under the caller's actor (``cli`` or the administrator).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy.orm import Session

from service.db.models import SessionEnd
from service.security.audit import record_audit
from service.security.credentials import hash_password
from service.security.sessions import end_sessions_of
from service.security.users import find_user, revoke_tokens

__all__ = ["AccountAction", "AccountChange", "change_account", "disable_user", "enable_user", "set_password"]


class AccountAction(str, enum.Enum):
    """What an administrator does to an account; the value is its audit action."""

    DISABLE = "admin.user.disable"
    ENABLE = "admin.user.enable"
    PASSWORD = "admin.user.password"


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


def change_account(session: Session, actor: str, action: AccountAction | str, name: str, *, password: str = "",
                   remote_addr: str = "") -> AccountChange:
    """Apply ``action`` to the user ``name`` and audit it as done by ``actor``, in the caller's transaction.

    Raises UnknownUser, and ValueError for a password that is too short (nothing is changed or audited then)."""
    action = AccountAction(action)
    if action is AccountAction.DISABLE:
        change = disable_user(session, name)
    elif action is AccountAction.ENABLE:
        change = enable_user(session, name)
    else:
        change = set_password(session, name, password)
    record_audit(session, actor, action.value, target=name, remote_addr=remote_addr,
                 detail=change.as_detail() if action is not AccountAction.ENABLE else None)
    return change
