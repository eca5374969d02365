"""The Celery application: queues cpu, gpu, io (and their .urgent twins), late acks, prefetch 1, no result backend.

Messages carry only ``(run_id, stage)``; the database holds the state, so a lost or duplicated message is harmless.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Protocol

from celery import Celery
from kombu import Queue

from service.config import Settings
from service.pipeline.embedded_broker import TRANSPORT_PATH, embedded_broker
from service.pipeline.delivery import DeliveryQueue
from service.pipeline.executor import StageExecutor
from service.pipeline.ledger import PipelineLedger, StageTicket
from service.pipeline.stages import Stage, queue_for
from service.pipeline.time_limits import StageTimeLimiter, StageTimeLimits

__all__ = ["create_celery", "CeleryDispatcher", "WorkerComponents", "QUEUES", "RUN_STAGE_TASK", "DELIVER_TASK"]

LOGGER = logging.getLogger(__name__)
RUN_STAGE_TASK = "m3edge.run_stage"
DELIVER_TASK = "m3edge.deliver_pending"
QUEUES = ("cpu.urgent", "gpu.urgent", "io.urgent", "cpu", "gpu", "io")


class WorkerComponents(Protocol):
    """What a worker process runs tasks with: the stage executor, the delivery queue, and what bounds a delivery's time
    (None where the pool enforces time limits itself)."""

    executor: StageExecutor
    deliveries: DeliveryQueue
    time_limiter: StageTimeLimiter | None


def create_celery(settings: Settings, time_limits: StageTimeLimits,
                  components_factory: Callable[[], WorkerComponents] | None = None) -> Celery:
    """The app for ``settings``. ``components_factory`` builds the worker's components once, on its first task;
    without it the app only sends (the API, the DICOM node). ``time_limits``: the stages' (the ledger's)."""
    broker = settings.effective_broker_url
    # A message not acknowledged by then is delivered again: longer than any stage may run.
    transport_options: dict = {"visibility_timeout": time_limits.longest_hard_s + 600}
    extra: dict = {}
    if settings.broker_url is None:  # the embedded broker: a SQLite file in HOME, no server
        broker, transport_options = embedded_broker(settings.home)
        extra["broker_transport"] = TRANSPORT_PATH
    elif broker.startswith(("redis://", "rediss://")):
        transport_options["queue_order_strategy"] = "priority"  # urgent queues are read first
    app = Celery("m3edge", broker=broker, set_as_current=False)
    app.conf.update(
        **extra,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue="cpu",
        task_queues=[Queue(name) for name in QUEUES],
        task_create_missing_queues=False,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    state: dict = {}

    def components() -> WorkerComponents:
        if components_factory is None:
            raise RuntimeError("this Celery app was created without worker components (a sender-only app)")
        if "components" not in state:
            state["components"] = components_factory()
        return state["components"]

    @app.task(name=RUN_STAGE_TASK, acks_late=True, reject_on_worker_lost=True)
    def run_stage(run_id: int, stage: str) -> str:
        return components().executor.execute(int(run_id), Stage(stage))

    @app.task(name=DELIVER_TASK, acks_late=True, reject_on_worker_lost=True)
    def deliver_pending(run_id: int) -> int:
        """Send what a review added to a run (the deliver stage itself sends the run's first objects)."""
        parts = components()
        limiter = parts.time_limiter
        with limiter.limit(Stage.DELIVER, int(run_id)) if limiter is not None else contextlib.nullcontext():
            return parts.deliveries.send_pending(int(run_id)).delivered

    return app


class CeleryDispatcher:
    """Sends a stage's message; returns False (and leaves the stage pending for the sweeper) when the broker is down.

    Each message carries its stage's limits (``ledger.time_limits``), which a prefork pool enforces; a solo-pool worker
    enforces the same limits with its own :class:`~service.pipeline.time_limits.StageTimeLimiter`."""

    def __init__(self, app: Celery, ledger: PipelineLedger) -> None:
        self.app = app
        self.ledger = ledger

    def dispatch(self, ticket: StageTicket, countdown: float = 0) -> bool:
        limit = self.ledger.time_limits[ticket.stage]
        try:
            self.app.send_task(
                RUN_STAGE_TASK,
                args=(ticket.run_id, ticket.stage.value),
                queue=queue_for(ticket.stage, ticket.priority),
                countdown=countdown or None,
                time_limit=limit.hard_s,
                soft_time_limit=limit.soft_s,
            )
        except Exception as exc:  # kombu raises OperationalError and friends when the broker is unreachable
            LOGGER.warning("cannot send stage %s of run %s to the broker: %s", ticket.stage.value, ticket.run_id,
                           exc.__class__.__name__)
            return False
        self.ledger.mark_queued(ticket)
        return True

    def deliver(self, run_id: int) -> bool:
        """Ask an io worker to send the run's pending deliveries; the sweeper does it later if the broker is down."""
        try:
            limit = self.ledger.time_limits[Stage.DELIVER]
            self.app.send_task(DELIVER_TASK, args=(run_id,), queue="io", time_limit=limit.hard_s,
                               soft_time_limit=limit.soft_s)
        except Exception as exc:
            LOGGER.warning("cannot send the delivery of run %s to the broker: %s", run_id, exc.__class__.__name__)
            return False
        return True


def worker_name() -> str:
    return f"m3edge@{socket.gethostname()}"
