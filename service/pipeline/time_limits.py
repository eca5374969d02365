"""Per-stage time limits, and their enforcement in a worker whose Celery pool does not enforce them (``solo``).

Every stage has a soft and a hard limit (:class:`StageTimeLimits`: the defaults in ``stages.TIME_LIMITS``, changed by
the ``STAGE_TIME_LIMITS`` setting). Celery's prefork and gevent pools enforce the limits each message carries; the
solo pool, which m3edge workers run (one process per GPU, models loaded once), ignores them. There,
:class:`StageTimeLimiter` does it around each stage:

- **soft limit**: a watchdog thread sends SIGALRM to the main thread, where the solo pool runs the task; the signal
  interrupts a blocking call (``sleep``, a socket read, a lock) and its handler raises :class:`StageTimedOut` in the
  stage. The executor records a timed-out attempt (transient: retried with back-off, up to the attempts limit). A
  stage that passed its soft limit never counts as done, even if it swallowed the exception and returned.
- **hard limit**: a stage still running (stuck in C code that never looks at signals, or one that ignored the
  exception) ends the worker process: the watchdog logs why, notes it on the stage row (at most a few seconds), and
  exits with :data:`HARD_LIMIT_EXIT_CODE` so that its supervisor (``m3edge serve``, systemd, compose) restarts it.
  The restarted worker takes back the stages it held (same ``--name``); late acks redeliver the message; the attempts
  counter ends a stage that keeps hanging.

With a pool that enforces limits itself the limiter only turns Celery's ``SoftTimeLimitExceeded`` into
:class:`StageTimedOut`, so the ledger records it the same way.

A stage run in a thread of its own beside another (the route's expert beside the VLM stage: ``work/route_expert.py``)
is bounded with ``limit(..., on_soft_limit=...)`` whatever the pool: no signal can interrupt it, so at the soft limit
the callback is told instead (its outcome will not be taken either), and at the hard limit the process ends as above.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from service.pipeline.stages import TIME_LIMITS, Stage, TransientStageError

__all__ = ["StageTimeLimit", "StageTimeLimits", "StageTimedOut", "StageTimeLimiter", "HARD_LIMIT_EXIT_CODE",
           "pool_enforces_time_limits"]

LOGGER = logging.getLogger(__name__)

#: The exit status of a worker ended by a stage's hard limit: EX_TEMPFAIL ("try again"); supervisors restart on it.
HARD_LIMIT_EXIT_CODE = 75
#: Celery pools that enforce ``soft_time_limit``/``time_limit`` themselves (Celery's "Time Limits": prefork/gevent).
_POOLS_WITH_LIMITS = frozenset({"prefork", "gevent"})


def pool_enforces_time_limits(pool: str) -> bool:
    return pool in _POOLS_WITH_LIMITS


def default_soft_seconds(hard_s: float) -> float:
    """30 s before the hard limit (a quarter of it for limits under two minutes): time to clean up and record."""
    return hard_s - min(30.0, hard_s / 4)


@dataclass(frozen=True)
class StageTimeLimit:
    soft_s: float
    hard_s: float

    def __post_init__(self) -> None:
        if not 0 < self.soft_s <= self.hard_s:
            raise ValueError(f"a stage's soft time limit ({self.soft_s:g} s) must be positive and not above its hard "
                             f"limit ({self.hard_s:g} s)")


class StageTimeLimits(Mapping[Stage, StageTimeLimit]):
    """The soft and hard limit of every stage."""

    def __init__(self, limits: Mapping[Stage | str, StageTimeLimit]) -> None:
        table = {Stage(stage): limit for stage, limit in limits.items()}
        missing = [stage.value for stage in Stage if stage not in table]
        if missing:
            raise ValueError(f"no time limit for stages {', '.join(missing)}")
        self._table = MappingProxyType(table)

    @classmethod
    def defaults(cls) -> StageTimeLimits:
        return cls.with_overrides({})

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, Mapping[str, Any]]) -> StageTimeLimits:
        """The defaults changed by ``{stage: {"soft": s, "hard": s}}`` (either may be left out; a soft limit left out
        follows the hard one). Raises ValueError naming the stage."""
        unknown = [name for name in overrides if name not in {s.value for s in Stage}]
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)} in the time limits; "
                             f"choose from {', '.join(s.value for s in Stage)}")
        table = {}
        for stage in Stage:
            given = overrides.get(stage.value) or {}
            hard = float(given.get("hard") or TIME_LIMITS[stage])
            soft = float(given.get("soft") or default_soft_seconds(hard))
            try:
                table[stage] = StageTimeLimit(soft, hard)
            except ValueError as exc:
                raise ValueError(f"stage {stage.value}: {exc}") from exc
        return cls(table)

    @classmethod
    def from_settings(cls, settings) -> StageTimeLimits:
        """The limits ``STAGE_TIME_LIMITS`` sets; ValueError names a bad one (``service.composition.stage_time_limits``
        turns it into a ConfigurationError as the service is built)."""
        return cls.with_overrides({stage: limit.model_dump(exclude_none=True)
                                   for stage, limit in settings.stage_time_limits.items()})

    def __getitem__(self, stage: Stage | str) -> StageTimeLimit:
        return self._table[Stage(stage)]

    def __iter__(self) -> Iterator[Stage]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    @property
    def longest_hard_s(self) -> float:
        return max(limit.hard_s for limit in self._table.values())


class StageTimedOut(TransientStageError):
    """A stage ran past its soft time limit: retried like any transient error, and never taken as done.

    ``interrupts_work``: code that turns errors into results (the agent records a failing model call as a model
    failure) lets it through, so the stage stops at its soft limit instead of going on to its next step."""

    interrupts_work = True

    def __init__(self, stage: Stage | str, soft_s: float) -> None:
        self.stage = Stage(stage)
        self.soft_s = soft_s
        super().__init__(f"timed out: ran past the {self.stage.value} stage's soft time limit of {soft_s:g} s")


class _StageWatch:
    """One stage's two deadlines, watched by a thread: at the soft one SIGALRM to the stage's thread (when it is the
    main thread, where Python runs signal handlers), at the hard one ``on_hard``."""

    def __init__(self, stage: Stage, limit: StageTimeLimit, signal_main_thread: bool,
                 on_hard: Callable[[], object], on_soft: Callable[[], object] | None = None) -> None:
        self.stage = stage
        self.limit = limit
        self.soft_passed = False
        self.previous_handler: Any = None
        self._signal_main_thread = signal_main_thread
        self._on_hard = on_hard
        self._on_soft = on_soft
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name=f"m3edge-time-limit-{stage.value}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """After this returns no signal is sent any more, and one still pending does nothing."""
        with self._lock:
            self._finished.set()

    def on_alarm(self, signum: int, frame: Any) -> None:
        """The SIGALRM handler while the stage runs (in the main thread): the stage gets the exception. An alarm
        before the soft limit is someone else's (pytest-timeout's, say): it goes to the handler we replaced."""
        if self.soft_passed:
            if not self._finished.is_set():
                raise StageTimedOut(self.stage, self.limit.soft_s)
        elif callable(self.previous_handler):
            self.previous_handler(signum, frame)

    def _watch(self) -> None:
        if self._finished.wait(self.limit.soft_s):
            return
        with self._lock:
            if self._finished.is_set():
                return
            self.soft_passed = True
            if self._signal_main_thread:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGALRM)
        if self._on_soft is not None:
            self._on_soft()
        if self._finished.wait(max(0.0, self.limit.hard_s - self.limit.soft_s)):
            return
        self._on_hard()


def _restore_alarm_handler(previous: Any) -> None:
    """Put the SIGALRM handler the stage replaced back, such that a signal the watch sent just before it stopped cannot
    reach that handler (the default one ends the process): SIGALRM is blocked, a pending one taken, the handler
    swapped (``signal.signal`` first runs a Python handler still due: the watch's, which now does nothing), unblocked."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        while signal.sigtimedwait({signal.SIGALRM}, 0) is not None:
            pass
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class StageTimeLimiter:
    """Enforces the stage time limits around each stage a worker runs (see the module's docstring).

    ``enforce=False`` (a pool that enforces the limits itself) leaves the stage alone. ``on_hard_limit(run_id, stage,
    message)`` notes a hard-limit expiry before the process ends; ``exit_process`` ends it (tests pass a recorder).
    """

    def __init__(self, limits: StageTimeLimits, *, enforce: bool = True,
                 on_hard_limit: Callable[[int, Stage, str], object] | None = None,
                 exit_process: Callable[[int], object] = os._exit, note_timeout_s: float = 5.0) -> None:
        self.limits = limits
        self.enforce = enforce
        self._on_hard_limit = on_hard_limit
        self._exit_process = exit_process
        self._note_timeout_s = note_timeout_s
        self._warned_not_main = False

    @classmethod
    def for_pool(cls, limits: StageTimeLimits, pool: str, **options) -> StageTimeLimiter:
        return cls(limits, enforce=not pool_enforces_time_limits(pool), **options)

    @contextmanager
    def limit(self, stage: Stage | str, run_id: int, *,
              on_soft_limit: Callable[[], object] | None = None) -> Iterator[None]:
        """Run the ``with`` body as stage ``stage`` of run ``run_id``: raises :class:`StageTimedOut` when the body
        passes the soft limit (whatever it raised or returned); ends the process at the hard limit.

        ``on_soft_limit`` marks a body run beside another stage, in a thread of its own: it is not interrupted but
        ``on_soft_limit()`` is called (from the watch's thread) at its soft limit, and both limits apply whatever the
        pool (none bounds such a thread)."""
        stage = Stage(stage)
        limit = self.limits[stage]
        beside = on_soft_limit is not None
        if not self.enforce and not beside:
            from billiard.exceptions import SoftTimeLimitExceeded

            try:
                yield
            except SoftTimeLimitExceeded as exc:  # raised by the pool: recorded like ours
                raise StageTimedOut(stage, limit.soft_s) from exc
            return
        in_main = threading.current_thread() is threading.main_thread() and not beside
        if not in_main and not beside and not self._warned_not_main:
            self._warned_not_main = True
            LOGGER.warning("stages run outside the main thread: only their hard time limits are enforced")
        watch = _StageWatch(stage, limit, in_main, lambda: self._end_process(run_id, stage, limit), on_soft_limit)
        if in_main:
            watch.previous_handler = signal.signal(signal.SIGALRM, watch.on_alarm)
        watch.start()
        try:
            yield
        except StageTimedOut:
            raise
        except Exception as exc:
            if watch.soft_passed:  # the stage turned the timeout into another error: it is still a timeout
                raise StageTimedOut(stage, limit.soft_s) from exc
            raise
        finally:
            watch.stop()
            if in_main:
                _restore_alarm_handler(watch.previous_handler)
        if watch.soft_passed:  # the stage swallowed the exception and returned: its outcome is not trusted
            raise StageTimedOut(stage, limit.soft_s)

    def _end_process(self, run_id: int, stage: Stage, limit: StageTimeLimit) -> None:
        message = (f"timed out: ran past the {stage.value} stage's hard time limit of {limit.hard_s:g} s; "
                   f"its worker process was ended (exit status {HARD_LIMIT_EXIT_CODE})")

        def say_why() -> None:
            LOGGER.critical("stage %s of run %s is still running at its hard time limit of %g s: ending worker "
                            "process %d (exit status %d) so that its supervisor restarts it; the stage is re-queued",
                            stage.value, run_id, limit.hard_s, os.getpid(), HARD_LIMIT_EXIT_CODE)
            try:
                if self._on_hard_limit is not None:
                    self._on_hard_limit(run_id, stage, message)
            except Exception:
                LOGGER.exception("could not note the hard time limit on stage %s of run %s", stage.value, run_id)
            for handler in logging.getLogger().handlers:
                try:
                    handler.flush()
                except Exception:  # noqa: BLE001 - a broken log stream must not keep the process from ending
                    pass

        # The stuck stage may hold a lock this needs (the database's, a log handler's writing to a full pipe): the
        # process ends after a bounded wait whatever happens to it.
        saying = threading.Thread(target=say_why, name="m3edge-time-limit-exit", daemon=True)
        saying.start()
        saying.join(self._note_timeout_s)
        self._exit_process(HARD_LIMIT_EXIT_CODE)
