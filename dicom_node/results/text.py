"""Text values as DICOM allows them (PS3.5 6.2): which control characters each kind of text VR may hold.

- ST, LT, UT (report text, a reader's comment, an explanation): the Graphic Character set plus CR, LF and FF; ESC
  only for ISO 2022 code extensions, which our objects never use (they are UTF-8). A TAB is not allowed: dciodvfy
  reports it as an error (a model's output held one).
- SH, LO, PN and the other short string VRs (names, descriptions, labels): no control character at all, and no
  backslash, which separates values.

``clean_text`` and ``clean_line`` make any str fit (for text from a model or a person); the result builders refuse
what does not fit, with ``check_text`` and ``check_line``, naming the argument and the character.
"""

from __future__ import annotations

import unicodedata

__all__ = ["clean_text", "clean_line", "check_text", "check_line", "TEXT_CONTROLS"]

TEXT_CONTROLS = frozenset("\r\n\f")  # the control characters ST, LT and UT may hold (ESC aside: never used here)
_SPACES = frozenset("\t\v")  # control characters that stand for blank space: they become one space


def _forbidden(character: str, allowed: frozenset[str]) -> bool:
    return character not in allowed and unicodedata.category(character) in ("Cc", "Cs")


def clean_text(text: str) -> str:
    """``text`` as an ST, LT or UT value: TAB and VT become a space, CR, LF and FF stay, every other control
    character (C0, DEL, C1) and any lone surrogate is dropped."""
    return "".join(" " if c in _SPACES else c for c in text if c in _SPACES or not _forbidden(c, TEXT_CONTROLS))


def clean_line(text: str) -> str:
    """``text`` as a short string value (SH, LO, PN, ...): every control character becomes a space (line breaks
    included), a backslash becomes '/'."""
    return "".join(" " if _forbidden(c, frozenset()) else c for c in text).replace("\\", "/")


def _first_forbidden(value: str, allowed: frozenset[str]) -> str | None:
    return next((c for c in value if _forbidden(c, allowed)), None)


def check_text(name: str, value: str) -> str:
    """``value`` unchanged if it fits ST, LT and UT; else ValueError naming ``name`` and the character."""
    found = _first_forbidden(value, TEXT_CONTROLS)
    if found is not None:
        raise ValueError(f"{name} holds the control character U+{ord(found):04X}, which DICOM text may not: "
                         "pass it through dicom_node.results.clean_text first")
    return value


def check_line(name: str, value: str) -> str:
    """``value`` unchanged if it fits a short string VR (no control character, no backslash); else ValueError."""
    found = _first_forbidden(value, frozenset())
    if found is not None:
        raise ValueError(f"{name} holds the control character U+{ord(found):04X}, which a DICOM name or short text "
                         "may not: pass it through dicom_node.results.clean_line first")
    if "\\" in value:
        raise ValueError(f"{name} must not contain a backslash (it separates DICOM values)")
    return value
