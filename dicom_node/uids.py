"""DICOM UIDs that become path components: checked so a crafted value can never name a place outside the spool."""

from __future__ import annotations

import re

__all__ = ["InvalidUid", "validate_uid", "MAX_UID_LENGTH"]

MAX_UID_LENGTH = 64
# Digits and single dots between non-empty components: "..", "/", "\\", NUL or spaces cannot pass.
# Leading zeros inside a component break PS3.5 9.1 but occur in real archives; they cannot escape a directory,
# so they are accepted rather than refusing a hospital's legacy studies.
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


class InvalidUid(ValueError):
    """A UID attribute is missing or is not a DICOM UID (PS3.5 9.1); ``attribute`` names which one."""

    def __init__(self, attribute: str, reason: str) -> None:
        super().__init__(f"{attribute} {reason}")
        self.attribute = attribute
        self.reason = reason


def validate_uid(value: object, attribute: str = "UID") -> str:
    """Return ``value`` as a UID safe to use as a file or directory name, or raise ``InvalidUid``.

    Trailing NUL padding and surrounding spaces (both legal in encoded UI values) are removed first.
    """
    if value is None:
        raise InvalidUid(attribute, "is missing")
    if not isinstance(value, str):
        raise InvalidUid(attribute, f"has the wrong type ({type(value).__name__}); a UID is a string")
    uid = value.rstrip("\x00").strip()
    if not uid:
        raise InvalidUid(attribute, "is empty")
    if len(uid) > MAX_UID_LENGTH:
        raise InvalidUid(attribute, f"is {len(uid)} characters long; a UID has at most {MAX_UID_LENGTH}")
    if not _UID.fullmatch(uid):
        raise InvalidUid(attribute, "contains characters other than digits and single dots between them")
    return uid
