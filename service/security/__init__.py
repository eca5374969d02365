"""Authentication (tokens, passwords), users and the audit trail."""

from service.security.audit import audit_csv, query_audit, record_audit
from service.security.credentials import hash_password, new_token, token_digest, verify_password
from service.security.users import (
    Principal,
    UnknownUser,
    UserExists,
    add_user,
    authenticate_password,
    authenticate_token,
    issue_token,
    revoke_tokens,
    set_password,
)

__all__ = [
    "Principal",
    "UnknownUser",
    "UserExists",
    "add_user",
    "audit_csv",
    "authenticate_password",
    "authenticate_token",
    "hash_password",
    "issue_token",
    "new_token",
    "query_audit",
    "record_audit",
    "revoke_tokens",
    "set_password",
    "token_digest",
    "verify_password",
]
