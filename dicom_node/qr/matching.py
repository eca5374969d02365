"""Attribute matching (PS3.4 C.2.2.2): universal, single value, wildcard, list of UIDs and date/time ranges.

One matcher for C-FIND (``dicom_node.qr``) and QIDO-RS (``service.dicomweb``): :class:`WildcardPattern` matches a
value in Python and gives the same pattern as SQL (``LIKE`` with escaping, or SQLite's case-sensitive ``GLOB``).

Wildcards (C.2.2.2.4): ``*`` matches any run of characters (none included), ``?`` exactly one. Matching splits the
pattern at its ``*`` into segments: the first must start the value, the last end it, and the others are found
left to right, each at its leftmost place after the previous one (leftmost is always safe: a later place leaves less
room for what follows). Nothing is ever retried, so a pattern costs at most (value length x pattern length) character
comparisons, whatever its stars: ``********!`` against a 64-character description was about 2 x 10^9 steps for the
regular expression this replaces (33 s holding the interpreter lock) and is 64 x 9 here. Query values are also
bounded in length (``MAX_QUERY_VALUE_LENGTH``) and in number (``MAX_QUERY_VALUES``), checked by :func:`query_values`.

Case: values match exactly, except Person Name (PN), which matches case-insensitively (Unicode lower case in
Python and PostgreSQL; SQLite's ``lower()`` folds only ASCII letters). PS3.4 leaves PN case sensitivity to the SCP.
"""

from __future__ import annotations

from functools import lru_cache

from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

__all__ = [
    "query_values", "element_values", "element_matches", "value_matches", "WildcardPattern", "QueryTooCostly",
    "has_wildcard", "MAX_QUERY_VALUE_LENGTH", "MAX_QUERY_VALUES",
]

_RANGE_VRS = {"DA", "TM", "DT"}
_NO_WILDCARD_VRS = {"UI", "DA", "TM", "DT", "SQ", "IS", "DS", "US", "UL", "SS", "SL", "FL", "FD"}
# The longest value a query may carry: a PN is three component groups of at most 64 characters each (PS3.5 6.2);
# every other matched VR is at most 64 characters (a UID list is many values of 64).
MAX_QUERY_VALUE_LENGTH = 64 * 3 + 2
MAX_QUERY_VALUES = 1000  # values of one key (a list of UIDs)


class QueryTooCostly(ValueError):
    """A query value longer than ``MAX_QUERY_VALUE_LENGTH`` or a key with more than ``MAX_QUERY_VALUES`` values."""


def has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def element_values(element: DataElement) -> list[str]:
    """The values of an element as stripped strings (a held value: no bound)."""
    value = element.value
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    return [text] if text else []


def query_values(element: DataElement) -> list[str]:
    """The values of a query element as strings; an empty list means universal matching.

    Raises ``QueryTooCostly`` for a value or a list beyond the bounds above."""
    value = element.value
    if isinstance(value, (MultiValue, list, tuple)) and len(value) > MAX_QUERY_VALUES:
        raise QueryTooCostly(f"a key holds more than {MAX_QUERY_VALUES} values")
    values = element_values(element)
    for text in values:
        if len(text) > MAX_QUERY_VALUE_LENGTH:
            raise QueryTooCostly(f"a query value is longer than {MAX_QUERY_VALUE_LENGTH} characters")
    return values


def _segment_at(segment: str, text: str, position: int) -> bool:
    """Does ``segment`` (``?`` = any one character) match ``text`` exactly at ``position``?"""
    if position + len(segment) > len(text):
        return False
    for offset, char in enumerate(segment):
        if char != "?" and char != text[position + offset]:
            return False
    return True


def _find_segment(segment: str, text: str, start: int, end: int) -> int:
    """The leftmost position in ``text[start:end]`` where ``segment`` matches, or -1."""
    if "?" not in segment:
        return text.find(segment, start, end)
    for position in range(start, end - len(segment) + 1):
        if _segment_at(segment, text, position):
            return position
    return -1


class WildcardPattern:
    """A query value with PS3.4 wildcards, matched without backtracking (see the module's docstring)."""

    __slots__ = ("pattern", "ignore_case", "_segments")

    def __init__(self, pattern: str, *, ignore_case: bool = False) -> None:
        if not isinstance(pattern, str):
            raise TypeError("pattern must be a str")
        if len(pattern) > MAX_QUERY_VALUE_LENGTH:
            raise QueryTooCostly(f"a query value is longer than {MAX_QUERY_VALUE_LENGTH} characters")
        self.pattern = pattern
        self.ignore_case = ignore_case
        folded = pattern.lower() if ignore_case else pattern
        self._segments = folded.split("*")  # consecutive stars give empty segments, which match anywhere

    def matches(self, text: str) -> bool:
        if self.ignore_case:
            text = text.lower()
        segments = self._segments
        if len(segments) == 1:
            return len(text) == len(segments[0]) and _segment_at(segments[0], text, 0)
        first, last = segments[0], segments[-1]
        if len(first) + len(last) > len(text):
            return False
        if not _segment_at(first, text, 0) or not _segment_at(last, text, len(text) - len(last)):
            return False
        position, end = len(first), len(text) - len(last)
        for segment in segments[1:-1]:
            if not segment:
                continue
            found = _find_segment(segment, text, position, end)
            if found < 0:
                return False
            position = found + len(segment)
        return True

    def sql_like(self) -> str:
        """The pattern for SQL ``LIKE ... ESCAPE '\\'``: ``%`` and ``_`` in the value are literal."""
        escaped = self.pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return escaped.replace("*", "%").replace("?", "_")

    def sql_glob(self) -> str:
        """The pattern for SQLite's case-sensitive ``GLOB`` (``*`` and ``?`` mean the same there; ``[`` is escaped)."""
        return self.pattern.replace("[", "[[]")

    def __repr__(self) -> str:
        return f"WildcardPattern({self.pattern!r}, ignore_case={self.ignore_case})"


@lru_cache(maxsize=256)
def _pattern(query: str, ignore_case: bool) -> WildcardPattern:
    return WildcardPattern(query, ignore_case=ignore_case)


def _in_range(query: str, candidate: str) -> bool:
    if "-" not in query:
        return candidate == query
    low, _, high = query.partition("-")
    if not candidate:
        return False
    # DA, TM and DT values compare as strings of the same precision; compare on the shorter length.
    if low and candidate[: len(low)] < low[: len(candidate)]:
        return False
    if high and candidate[: len(high)] > high[: len(candidate)]:
        return False
    return True


def value_matches(vr: str, query: str, candidate: str) -> bool:
    """One query value against one candidate value."""
    candidate = candidate.strip()
    if vr in _RANGE_VRS:
        return _in_range(query, candidate)
    if vr not in _NO_WILDCARD_VRS and has_wildcard(query):
        return _pattern(query, vr == "PN").matches(candidate)
    if vr == "PN":
        return query.lower() == candidate.lower()
    return query == candidate


def element_matches(vr: str, queries: list[str], candidates: list[str]) -> bool:
    """Universal match for no query values; else any query value (a UID list) matching any candidate value."""
    if not queries:
        return True
    return any(value_matches(vr, query, candidate) for query in queries for candidate in candidates)
