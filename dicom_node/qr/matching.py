"""C-FIND attribute matching (PS3.4 C.2.2.2): universal, single value, wildcard, list of UIDs and date/time ranges."""

from __future__ import annotations

import re
from functools import lru_cache

from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

__all__ = ["query_values", "element_matches", "value_matches"]

_RANGE_VRS = {"DA", "TM", "DT"}
_NO_WILDCARD_VRS = {"UI", "DA", "TM", "DT", "SQ", "IS", "DS", "US", "UL", "SS", "SL", "FL", "FD"}


def query_values(element: DataElement) -> list[str]:
    """The values of a query element as strings; an empty list means universal matching."""
    value = element.value
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    return [text] if text else []


@lru_cache(maxsize=256)
def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = ("." if ch == "?" else ".*" if ch == "*" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


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
    if vr not in _NO_WILDCARD_VRS and ("*" in query or "?" in query):
        return _wildcard(query, vr == "PN").fullmatch(candidate) is not None
    if vr == "PN":
        return query.casefold() == candidate.casefold()
    return query == candidate


def element_matches(vr: str, queries: list[str], candidates: list[str]) -> bool:
    """Universal match for no query values; else any query value (a UID list) matching any candidate value."""
    if not queries:
        return True
    return any(value_matches(vr, query, candidate) for query in queries for candidate in candidates)
