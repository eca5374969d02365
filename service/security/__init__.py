"""Authentication (tokens, passwords, dashboard sessions), accounts and the audit trail."""

from service.security.accounts import (
    AccountAction,
    AccountChange,
    change_account,
    disable_user,
    enable_user,
    set_password,
)
from service.security.audit import audit_csv, query_audit, record_audit
from service.security.credentials import hash_password, new_token, token_digest, verify_password
from service.security.sessions import (
    SessionPolicy,
    end_session,
    end_sessions_of,
    live_session_counts,
    open_session,
    session_principal,
)
from service.security.users import (
    Principal,
    UnknownUser,
    UserExists,
    add_user,
    authenticate_password,
    authenticate_token,
    find_user,
    issue_token,
    revoke_tokens,
)

__all__ = [
    "AccountAction",
    "AccountChange",
    "Principal",
    "SessionPolicy",
    "UnknownUser",
    "UserExists",
    "add_user",
    "audit_csv",
    "authenticate_password",
    "authenticate_token",
    "change_account",
    "disable_user",
    "enable_user",
    "end_session",
    "end_sessions_of",
    "find_user",
    "hash_password",
    "issue_token",
    "live_session_counts",
    "new_token",
    "open_session",
    "query_audit",
    "record_audit",
    "revoke_tokens",
    "session_principal",
    "set_password",
    "token_digest",
    "verify_password",
]
