"""Run one claimed stage and move the run on: the body of every pipeline task, free of Celery so it can be tested.

A transient failure is retried after a back-off (``backoff_seconds``): the ledger keeps the stage from being claimed
until then, and the retry's message is sent with that countdown. A message that arrives while a stage waits for its
retry (a duplicate: sent with the VLM stage's group, by the sweeper, or delivered again) is sent again for when the
back-off ends: it is neither run early nor lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from service.pipeline.contracts import StageContract, stage_result_for_storage
from service.pipeline.ledger import PipelineLedger, StageClaim, StageNotDue, StageTicket
from service.pipeline.stages import PermanentStageError, Stage, StudySkipped, TransientStageError, dispatch_group
from service.pipeline.time_limits import StageTimeLimiter

__all__ = ["StageOutcome", "StageHandler", "Dispatcher", "StageExecutor", "backoff_seconds"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageOutcome:
    """What a stage handler returns. ``result``: the stage's contract (``service.pipeline.contracts``), kept as JSON
    and read back typed by later stages (a plain dict is kept as given: the executor's own tests); ``route``: the
    plan stage sets the run's route (a ``Route``'s JSON form)."""

    result: StageContract | dict = field(default_factory=dict)
    route: dict | None = None
    priority: str | None = None


StageHandler = Callable[[StageClaim], StageOutcome]


class Dispatcher(Protocol):
    def dispatch(self, ticket: StageTicket, countdown: float = 0) -> bool: ...

    def deliver(self, run_id: int) -> bool: ...


def backoff_seconds(attempt: int, base: float = 5.0, cap: float = 300.0) -> float:
    return min(cap, base * 2 ** max(0, attempt - 1))


class StageExecutor:
    def __init__(self, ledger: PipelineLedger, handlers: Mapping[Stage, StageHandler], dispatcher: Dispatcher,
                 worker_name: str = "", backoff: Callable[[int], float] = backoff_seconds,
                 time_limiter: StageTimeLimiter | None = None) -> None:
        """``time_limiter`` enforces the stages' time limits (a solo-pool worker's); without it a stage is unbounded."""
        missing = [stage.value for stage in Stage if stage not in handlers]
        if missing:
            raise ValueError(f"no handler for stages {', '.join(missing)}")
        self.ledger = ledger
        self.handlers = dict(handlers)
        self.dispatcher = dispatcher
        self.worker_name = worker_name
        self.backoff = backoff
        self.time_limiter = time_limiter

    def execute(self, run_id: int, stage: Stage | str) -> str:
        """Claim, run, record, hand on. Returns what happened (for logs and tests)."""
        stage = Stage(stage)
        try:
            claim = self.ledger.claim(run_id, stage, self.worker_name)
        except StageNotDue as exc:
            LOGGER.info("%s: this message is sent again for then", exc)
            self.dispatcher.dispatch(exc.ticket, countdown=exc.wait_s)
            return "deferred"
        if claim is None:
            return "not-claimed"
        started = time.perf_counter()
        try:
            with self._time_limit(stage, run_id):
                outcome = self.handlers[stage](claim)
            result = stage_result_for_storage(stage, outcome.result)  # a stage's own contract (ContractError)
            route = outcome.route
        except StudySkipped as exc:
            self.ledger.skip(run_id, stage, str(exc))
            LOGGER.info("study %s skipped at %s: %s", claim.study_uid, stage.value, exc)
            return "skipped"
        except TransientStageError as exc:
            delay = self.backoff(claim.attempt)
            attempts = self.ledger.retry_later(run_id, stage, str(exc), delay)
            if attempts >= self.ledger.max_attempts:
                self.ledger.fail(run_id, stage, f"{exc} (gave up after {attempts} attempts)")
                return "failed"
            LOGGER.warning("stage %s of run %s failed (attempt %d), retry in %.0f s: %s",
                           stage.value, run_id, attempts, delay, exc)
            self.dispatcher.dispatch(StageTicket(run_id, stage, claim.route.get("priority", "routine")), countdown=delay)
            return "retrying"
        except PermanentStageError as exc:
            self.ledger.fail(run_id, stage, str(exc))
            return "failed"
        except Exception as exc:  # an unexpected error: the study fails visibly and can be reprocessed
            LOGGER.exception("stage %s of run %s raised", stage.value, run_id)
            self.ledger.fail(run_id, stage, f"{exc.__class__.__name__}: {exc}")
            return "failed"
        elapsed = time.perf_counter() - started
        ticket = self.ledger.finish(run_id, stage, result, route=route, priority=outcome.priority)
        LOGGER.info("study %s: %s done in %.2f s", claim.study_uid, stage.value, elapsed)
        if ticket is not None:
            for stage_to_send in dispatch_group(ticket.stage):
                self.dispatcher.dispatch(StageTicket(ticket.run_id, stage_to_send, ticket.priority))
        return "done"

    def _time_limit(self, stage: Stage, run_id: int) -> AbstractContextManager[None]:
        return nullcontext() if self.time_limiter is None else self.time_limiter.limit(stage, run_id)
