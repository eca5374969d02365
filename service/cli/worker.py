"""``m3edge worker --queues cpu,gpu,io``: one pipeline worker process (prefetch 1, late acks, models loaded once).

Production runs one ``--queues gpu`` worker per GPU (``CUDA_VISIBLE_DEVICES`` picks it) beside ``cpu``/``io`` workers;
``m3edge serve`` runs one worker on every queue as a supervised child process (:class:`WorkerProcess`).
Also here: the pipeline's entry the DICOM node needs (:func:`pipeline_intake`, the study-complete hook and sweeper).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

import typer

from service.cli.context import CliError, cli_context
from service.config import Settings
from service.pipeline.time_limits import HARD_LIMIT_EXIT_CODE

__all__ = ["worker_command", "WorkerProcess", "pipeline_intake", "check_routing_rules", "WORKER_CLI"]

LOGGER = logging.getLogger(__name__)
WORKER_CLI = [sys.executable, "-c", "from service.cli.main import main; main()", "worker"]


def check_routing_rules(settings: Settings) -> None:
    """Refuse to start on invalid routing rules; the error names every problem's line and field."""
    from service.routing import RoutingRulesError
    from service.routing.store import RoutingRulesStore

    try:
        RoutingRulesStore(settings).load()
    except RoutingRulesError as exc:
        raise CliError(str(exc)) from exc


def pipeline_intake(settings: Settings, session_factory):
    """The study-complete hook's target (a run per completed study, its first stage sent to the broker) and the
    sweeper that sends what the broker could not take and re-sends stalled stages."""
    from service.pipeline.celery_app import CeleryDispatcher, create_celery
    from service.pipeline.intake import PipelineIntake, PipelineSweeper
    from service.pipeline.ledger import PipelineLedger
    from service.pipeline.time_limits import StageTimeLimits

    ledger = PipelineLedger(session_factory, time_limits=StageTimeLimits.from_settings(settings))
    intake = PipelineIntake(ledger, CeleryDispatcher(create_celery(settings), ledger))
    return intake, PipelineSweeper(intake, settings.pipeline_sweep_seconds)


def worker_command(
    ctx: typer.Context,
    queues: str = typer.Option("cpu,gpu,io", "--queues", help="Comma-separated queues: cpu, gpu, io (urgent first)."),
    name: str | None = typer.Option(None, "--name", help="Worker name, stable across restarts (default from the "
                                    "queues and the host); a restarted worker re-queues what it held when it died."),
    parent_pid: int | None = typer.Option(None, "--parent-pid", hidden=True,
                                          help="Stop (warm shutdown) when this process is gone (m3edge serve's child)."),
) -> None:
    """Run a pipeline worker until SIGTERM (warm shutdown: the stage in progress finishes first).

    Every stage has time limits (STAGE_TIME_LIMITS): past its soft limit a stage is interrupted and retried with
    back-off (up to 5 attempts); past its hard limit (stuck where it cannot be interrupted) the worker exits with
    status 75, for its supervisor (m3edge serve, systemd, compose) to restart it, and the stage is re-queued."""
    from service.cli.serve import prepare_database
    from service.pipeline.work import build_stage_handlers, default_sender
    from service.pipeline.worker import PipelineWorker, parse_queues

    context = cli_context(ctx)
    settings = context.settings
    try:
        queue_names = parse_queues(queues)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    prepare_database(settings)
    check_routing_rules(settings)
    from engines.backends.threads import limit_cpu_threads

    limit_cpu_threads(settings.worker_cpu_threads)
    factory = context.session_factory
    worker = PipelineWorker(
        settings, factory, lambda: build_stage_handlers(settings, factory), queue_names,
        sender_factory=lambda: default_sender(settings), name=name, sweeper_interval_s=settings.pipeline_sweep_seconds,
    )
    LOGGER.info("m3edge worker %s: queues %s, broker %s, database %s, model CPU threads %s", worker.name,
                ",".join(queue_names), "embedded" if settings.broker_url is None else settings.broker_url.partition(":")[0],
                settings.effective_database_url.partition(":")[0], settings.worker_cpu_threads or "one per core")
    if parent_pid is not None:
        _stop_when_parent_is_gone(parent_pid)
    try:
        worker.run()
    finally:
        context.engine.dispose()
    LOGGER.info("m3edge worker %s stopped", worker.name)


def _stop_when_parent_is_gone(parent_pid: int, interval_s: float = 1.0) -> None:
    """A child of ``m3edge serve`` must not outlive it (even a SIGKILL of serve): SIGTERM ourselves once it is gone."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        LOGGER.warning("m3edge serve (pid %d) is gone: stopping this worker", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="m3edge-parent-watch", daemon=True).start()


class WorkerProcess:
    """``m3edge worker`` as a supervised child of ``m3edge serve``: restarted (after a pause) if it dies.

    A child rather than a thread: Celery's worker wants the main thread (signal handlers, warm shutdown), and a model
    that crashes or exhausts memory takes down only the worker, never the DICOM node; it is also exactly what
    production runs, so both modes share one code path.
    """

    def __init__(self, queues: str = "cpu,gpu,io", restart_delay_s: float = 2.0, *,
                 command: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> None:
        """``command`` and ``env`` replace ``m3edge worker --queues QUEUES`` and this process's environment."""
        self.command = list(command or [*WORKER_CLI, "--queues", queues, "--parent-pid", str(os.getpid())])
        self.env = dict(os.environ if env is None else env)
        self.restart_delay_s = restart_delay_s
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="m3edge-worker-watch", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        with self._lock:
            self.process = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL)
        LOGGER.info("pipeline worker started (pid %d)", self.process.pid)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            process = self.process
            if process is not None and process.poll() is not None and not self._stopping.is_set():
                why = " (a stage ran past its hard time limit)" if process.returncode == HARD_LIMIT_EXIT_CODE else ""
                LOGGER.error("pipeline worker (pid %d) exited with status %s%s; restarting in %.0f s", process.pid,
                             process.returncode, why, self.restart_delay_s)
                if self._stopping.wait(self.restart_delay_s):
                    return
                self.restarts += 1
                self._spawn()
            self._stopping.wait(0.5)

    def stop(self, timeout: float = 60.0) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        with self._lock:
            process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # warm shutdown: the stage in progress finishes
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            LOGGER.warning("pipeline worker did not stop in %.0f s: killed (its stage is re-queued at next start)",
                           timeout)
            process.kill()
            process.wait(timeout=10)
