"""Study assembly: decide when a study has finished arriving, and say so once per receiving period.

A study is complete when nothing arrived for ``idle_seconds``, or ``release_grace_seconds`` after the last of the
associations sending into it was released (none still open, nothing received after that release), or at the latest
``max_open_seconds`` after its receiving period opened. The state lives in a :class:`StudyLedger` (the service's database), never in memory, so a restarted assembler resumes every timer
from the stored timestamps and nothing pending is lost.

Completion is race-free: the ledger completes a study only if it is still receiving and its ``last_received_at`` is
the one the decision was based on; an instance that arrives in between wins and the study stays open.
After the ledger committed a completion, the injected ``on_study_complete(study_uid)`` hook runs. A failing hook is
logged and does not stop the assembler. If the process dies between the commit and the hook, the study stays in
status ``complete`` in the ledger: that durable marker is what a sweeper uses to hand the study on later.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol

__all__ = [
    "AssemblyTimings",
    "CompletionReason",
    "OpenStudy",
    "StudyAssembler",
    "StudyCompleteHook",
    "StudyLedger",
    "completion_due",
]

LOGGER = logging.getLogger(__name__)

MAX_FAILURE_BACKOFF_SECONDS = 30.0

Clock = Callable[[], datetime]
StudyCompleteHook = Callable[[str], object]


def _utc(value: datetime) -> datetime:
    """Timestamps from a store without time zones (SQLite) are UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _system_clock() -> datetime:
    return datetime.now(timezone.utc)


class CompletionReason(str, enum.Enum):
    IDLE = "idle"  # nothing arrived for idle_seconds
    RELEASED = "released"  # the association that sent the last instance was released, and the grace passed
    MAX_OPEN = "max_open"  # the study kept trickling in for max_open_seconds


@dataclass(frozen=True)
class OpenStudy:
    """What the assembler needs to know of a study still receiving; ``last_received_at`` is the race token."""

    study_uid: str
    opened_at: datetime
    last_received_at: datetime
    last_released_at: datetime | None = None
    open_associations: int = 0  # senders that stored into it and have not ended: a release waits for the last one


@dataclass(frozen=True)
class AssemblyTimings:
    idle_seconds: float = 30.0
    release_grace_seconds: float = 5.0
    max_open_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if self.idle_seconds <= 0:
            raise ValueError(f"idle_seconds must be positive, not {self.idle_seconds}")
        if self.release_grace_seconds < 0:
            raise ValueError(f"release_grace_seconds cannot be negative, not {self.release_grace_seconds}")
        if self.max_open_seconds <= 0:
            raise ValueError(f"max_open_seconds must be positive, not {self.max_open_seconds}")

    @property
    def poll_interval(self) -> float:
        """How often the thread looks at the ledger: often enough for the shortest timer, at most once a second."""
        shortest = min(self.idle_seconds, self.max_open_seconds)
        if self.release_grace_seconds > 0:
            shortest = min(shortest, self.release_grace_seconds)
        return max(0.01, min(1.0, shortest / 4))


class StudyLedger(Protocol):
    """Where assembly state lives (the service implements it over its database)."""

    def open_studies(self) -> Sequence[OpenStudy]:
        """Every study still receiving."""
        ...

    def complete(self, study: OpenStudy, reason: CompletionReason, completed_at: datetime) -> bool:
        """Mark ``study`` complete if it is still receiving and unchanged since read; commit; True if it did."""
        ...


def completion_due(study: OpenStudy, timings: AssemblyTimings, now: datetime) -> CompletionReason | None:
    """The reason ``study`` is complete at ``now``, or None while it is still open.

    When several deadlines have passed (an assembler that was down), the one that passed first is the reason.
    """
    last_received = _utc(study.last_received_at)
    deadlines = [
        (last_received + timedelta(seconds=timings.idle_seconds), CompletionReason.IDLE),
        (_utc(study.opened_at) + timedelta(seconds=timings.max_open_seconds), CompletionReason.MAX_OPEN),
    ]
    if study.last_released_at is not None and study.open_associations <= 0:
        released = _utc(study.last_released_at)
        # A release only counts when no other sender is open and nothing arrived after it.
        if released >= last_received:
            deadlines.append((released + timedelta(seconds=timings.release_grace_seconds), CompletionReason.RELEASED))
    deadline, reason = min(deadlines, key=lambda item: item[0])
    return reason if _utc(now) >= deadline else None


class StudyAssembler:
    """Watches the ledger's open studies and completes them.

    ``sweep()`` is one pass; ``start()`` runs passes in a thread every ``timings.poll_interval`` until ``stop()``.
    """

    def __init__(
        self,
        ledger: StudyLedger,
        timings: AssemblyTimings,
        on_study_complete: StudyCompleteHook,
        *,
        clock: Clock = _system_clock,
    ) -> None:
        if not callable(on_study_complete):
            raise TypeError("on_study_complete must be a callable taking the Study Instance UID")
        self.ledger = ledger
        self.timings = timings
        self.on_study_complete = on_study_complete
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass ---------------------------------------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Complete every study that is due now; return the Study Instance UIDs this pass completed."""
        completed: list[str] = []
        for study in self.ledger.open_studies():
            now = self.clock()
            reason = completion_due(study, self.timings, now)
            if reason is None:
                continue
            if not self.ledger.complete(study, reason, now):
                LOGGER.info("study %s received more data while completing; it stays open", study.study_uid)
                continue
            LOGGER.info("study %s complete (%s)", study.study_uid, reason.value)
            completed.append(study.study_uid)
            self._run_hook(study.study_uid)
        return completed

    def _run_hook(self, study_uid: str) -> None:
        try:
            self.on_study_complete(study_uid)
        except Exception:  # the hook is the service's; its failure must not stop assembly
            LOGGER.exception(
                "the study-complete hook failed for study %s; it stays 'complete' for the sweeper to pick up", study_uid
            )

    # -- the thread -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this StudyAssembler is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="study-assembler", daemon=True)
        self._thread.start()
        LOGGER.info(
            "study assembler running: idle %.1f s, release grace %.1f s, max open %.0f s",
            self.timings.idle_seconds, self.timings.release_grace_seconds, self.timings.max_open_seconds,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after its current pass; pending studies stay pending in the ledger."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        if thread.is_alive():
            LOGGER.warning("the study assembler did not stop within %.0f s", timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        interval = self.timings.poll_interval
        failures = 0
        while not self._stop.is_set():
            wait = interval
            try:
                self.sweep()
                if failures:
                    LOGGER.info("study assembly works again after %d failed pass(es)", failures)
                failures = 0
            except Exception as exc:  # the database is unreachable or failing: back off, keep trying
                failures += 1
                wait = min(MAX_FAILURE_BACKOFF_SECONDS, interval * 2**failures)
                if failures == 1:
                    LOGGER.exception("study assembly pass failed; retrying with back-off")
                else:
                    LOGGER.warning(
                        "study assembly pass failed again (%s); next try in %.1f s", exc.__class__.__name__, wait
                    )
            self._stop.wait(wait)
