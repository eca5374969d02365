"""The worklist page's filters and rows: ``service.worklist`` over a browser's query string.

Filters come from a query string, so they are checked here and a bad one becomes a message on the page (the filter is
then not applied), never an error page. The default view is the reader's: studies awaiting review, urgent first,
then the oldest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from service.worklist import (
    MAX_SEARCH_LENGTH,
    STATE_WORDS,
    ReviewState,
    WorklistEntry,
    WorklistQuery,
    WorklistSort,
    query_worklist,
)

__all__ = ["WorklistFilters", "worklist_rows", "PAGE_SIZE", "STATE_CHOICES", "SORT_COLUMNS"]

PAGE_SIZE = 50
_MODALITY = re.compile(r"^[A-Z]{1,16}$")
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
ALL_STATES = "all"
# (value, label) of the state filter: one state, or every state but skipped ("all"; skipped only when asked).
STATE_CHOICES = [(s.value, STATE_WORDS[s]) for s in ReviewState if s is not ReviewState.NO_REPORT] + \
    [(ALL_STATES, "all but skipped")]
SORT_COLUMNS = {s.value for s in WorklistSort}


@dataclass
class WorklistFilters:
    state: str = ReviewState.AWAITING_REVIEW.value
    modality: str = ""
    date_from: str = ""  # YYYYMMDD
    date_to: str = ""
    search: str = ""
    sort: str = WorklistSort.PRIORITY.value
    descending: bool = False
    offset: int = 0
    problems: list[str] = field(default_factory=list)

    @classmethod
    def from_query(cls, query: dict[str, str]) -> WorklistFilters:
        filters = cls()
        state = query.get("state", "").strip().lower()
        if state:
            if state in {value for value, _ in STATE_CHOICES}:
                filters.state = state
            else:
                filters.problems.append(f"unknown state {state[:32]!r}")
        modality = query.get("modality", "").strip().upper()
        if modality:
            if _MODALITY.match(modality):
                filters.modality = modality
            else:
                filters.problems.append("a modality is 1-16 letters, e.g. CT")
        for key in ("date_from", "date_to"):
            value = query.get(key, "").strip()
            if not value:
                continue
            match = _DATE.match(value)
            if match:
                setattr(filters, key, "".join(match.groups()))
            else:
                filters.problems.append(f"{key.replace('_', ' ')}: use a date like 2026-01-31")
        search = query.get("q", "").strip()
        if len(search) > MAX_SEARCH_LENGTH:
            filters.problems.append(f"search: at most {MAX_SEARCH_LENGTH} characters")
        else:
            filters.search = search
        sort = query.get("sort", "").strip()
        if sort:
            column = sort.lstrip("-")
            if column in SORT_COLUMNS:
                filters.sort, filters.descending = column, sort.startswith("-")
            else:
                filters.problems.append(f"cannot sort by {column[:32]!r}")
        offset = query.get("offset", "0")
        filters.offset = int(offset) if offset.isdigit() and int(offset) < 10_000_000 else 0
        return filters

    @property
    def sort_key(self) -> str:
        return ("-" if self.descending else "") + self.sort

    def query_args(self, **overrides) -> dict[str, str]:
        """The filters as query parameters (for links and the live refresh), without the defaults."""
        values = {"state": self.state if self.state != ReviewState.AWAITING_REVIEW.value else "",
                  "modality": self.modality, "date_from": self.date_from, "date_to": self.date_to,
                  "q": self.search, "sort": self.sort_key if self.sort_key != WorklistSort.PRIORITY.value else "",
                  "offset": str(self.offset) if self.offset else ""}
        values.update({k: str(v) for k, v in overrides.items()})
        return {k: v for k, v in values.items() if v and v != "0"}

    def sort_link(self, column: str) -> dict[str, str]:
        """The query of a column header's link: sort by it, or reverse it when it is the current sort."""
        key = ("" if self.descending else "-") + column if self.sort == column else column
        return self.query_args(sort=key, offset="")

    def to_query(self) -> WorklistQuery:
        states = () if self.state == ALL_STATES else (ReviewState(self.state),)
        return WorklistQuery(states=states, modality=self.modality, date_from=self.date_from, date_to=self.date_to,
                             search=self.search, sort=WorklistSort(self.sort), descending=self.descending,
                             limit=PAGE_SIZE, offset=self.offset,
                             include_skipped=self.state == ReviewState.SKIPPED.value)


def worklist_rows(session, filters: WorklistFilters) -> tuple[list[WorklistEntry], int]:
    """One page of rows and the number of studies matching the filters."""
    return query_worklist(session, filters.to_query())
