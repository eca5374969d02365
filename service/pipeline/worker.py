"""A pipeline worker: one Celery worker process reading the queues it is given, with prefetch 1 and late acks.

GPU workers run one process per GPU (``--pool solo``), so models load once and stay loaded. The solo pool ignores
Celery's time limits, so the worker enforces each stage's itself (``service.pipeline.time_limits``): a stage past its
soft limit gets an exception, and one past its hard limit ends the process for its supervisor to restart.

Why our limiter rather than Celery's prefork pool, which enforces the same limits (kept on reasons, not on a
measurement): (1) a prefork child killed at its hard limit leaves no word on the stage row (only the pool's log), where
our watchdog writes why on the row before the process ends, so the ledger and the reviewer see it; (2) the route's
expert runs in a thread beside the VLM stage (``work/route_expert.py``), which no signal of the pool reaches, so that
limit needs our limiter under any pool; (3) one process per GPU holds the models once, with no pool parent beside it.
With a pool that enforces limits (``pool_enforces_time_limits``) the limiter leaves enforcement to Celery.
"""

from __future__ import annotations

import logging
import socket
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from celery import Celery
from celery.exceptions import SecurityWarning
from sqlalchemy.orm import Session, sessionmaker

from service.pipeline.celery_app import QUEUES, CeleryDispatcher
from service.pipeline.delivery import DeliveryQueue, Sender
from service.pipeline.executor import StageExecutor, StageHandler
from service.pipeline.intake import PipelineSweeper
from service.pipeline.ledger import PipelineLedger
from service.pipeline.stages import Stage
from service.pipeline.time_limits import StageTimeLimiter

__all__ = ["PipelineWorker", "parse_queues", "default_worker_name"]

LOGGER = logging.getLogger(__name__)


def parse_queues(text: str) -> list[str]:
    """``cpu,gpu`` -> ``[cpu.urgent, gpu.urgent, cpu, gpu]``: every queue's urgent twin is read first."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = {q for q in QUEUES if not q.endswith(".urgent")}
    unknown = [n for n in names if n.removesuffix(".urgent") not in known]
    if unknown or not names:
        raise ValueError(f"unknown queue(s) {', '.join(unknown) or '(none given)'}; choose from cpu, gpu, io")
    base = [n.removesuffix(".urgent") for n in names]
    ordered = [f"{n}.urgent" for n in base] + base
    return list(dict.fromkeys(ordered))


def default_worker_name(queues: Sequence[str]) -> str:
    """Stable across restarts, so a restarted worker recognises the stages it held when it died."""
    base = "+".join(q for q in queues if not q.endswith(".urgent"))
    return f"m3edge-{base}@{socket.gethostname()}"


@dataclass(frozen=True)
class _Components:
    executor: StageExecutor
    deliveries: DeliveryQueue
    time_limiter: StageTimeLimiter | None


class SendingSide(Protocol):
    """The pipeline's sending side the worker runs beside (``service.composition.Pipeline``)."""

    ledger: PipelineLedger
    app: Celery
    dispatcher: CeleryDispatcher
    sweeper: PipelineSweeper | None


class PipelineWorker:
    """Runs a Celery worker on ``pipeline.app``; its executor (handlers made once, lazily, in this process) and
    delivery queue are made on the first task (:meth:`make_components`, the app's components factory).

    Built by ``service.composition.build_worker``, which wires the app's components factory to this worker."""

    def __init__(self, pipeline: SendingSide, session_factory: sessionmaker[Session],
                 handlers_factory: Callable[[], Mapping[Stage, StageHandler]], queues: Sequence[str],
                 sender_factory: Callable[[], Sender], name: str | None = None, pool: str = "solo") -> None:
        self.queues = list(queues)
        self.name = name or default_worker_name(self.queues)
        self.pool = pool
        self.ledger = pipeline.ledger
        self.session_factory = session_factory
        self._sender_factory = sender_factory
        self.app: Celery = pipeline.app
        self.dispatcher = pipeline.dispatcher
        self._handlers_factory = handlers_factory
        self.sweeper = pipeline.sweeper
        self._worker = None

    def make_components(self) -> _Components:
        limiter = StageTimeLimiter.for_pool(self.ledger.time_limits, self.pool, on_hard_limit=self._note_hard_limit)
        executor = StageExecutor(self.ledger, self._handlers_factory(), self.dispatcher, worker_name=self.name,
                                 time_limiter=limiter)
        return _Components(executor, DeliveryQueue(self.session_factory, self._sender_factory()), limiter)

    def _note_hard_limit(self, run_id: int, stage: Stage, message: str) -> None:
        self.ledger.note_error(run_id, stage, f"{message} (worker {self.name})")

    def recover(self) -> int:
        """Re-queue the stages this worker held when it last stopped (kill -9, power loss)."""
        tickets = self.ledger.recover_worker(self.name)
        for ticket in tickets:
            self.dispatcher.dispatch(ticket)
        return len(tickets)

    def run(self) -> None:
        """Block until the worker is told to stop (SIGTERM/SIGINT: Celery's warm shutdown)."""
        recovered = self.recover()
        LOGGER.info("worker %s reading %s (%d stage(s) recovered)", self.name, ",".join(self.queues), recovered)
        if self.sweeper is not None:
            self.sweeper.start()
        try:
            # Celery warns on stderr, at length, when the worker runs as root; `m3edge doctor` says it in one line
            # (the container image runs as an unprivileged user).
            warnings.filterwarnings("ignore", category=SecurityWarning)
            self._worker = self.app.Worker(
                hostname=self.name, queues=self.queues, pool=self.pool, concurrency=1, prefetch_multiplier=1,
                loglevel=logging.getLevelName(logging.getLogger().level), without_heartbeat=True,
                without_gossip=True, without_mingle=True, quiet=True,
            )
            self._worker.start()
        finally:
            if self.sweeper is not None:
                self.sweeper.stop()

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop(in_sighandler=False)
