"""``m3edge worker --queues cpu,gpu,io``: one pipeline worker process (prefetch 1, late acks, models loaded once).

Production runs one ``--queues gpu`` worker per GPU (``CUDA_VISIBLE_DEVICES`` picks it) beside ``cpu``/``io`` workers;
``m3edge serve`` runs one worker on every queue as a supervised child process (``service.worker_process``).
The worker is built by the composition root (``service.composition.build_worker``).
"""

from __future__ import annotations

import logging
import signal

import typer

from service.cli.context import CliError, cli_context
from service.cli.startup import check_routing_rules, prepare_database

__all__ = ["worker_command"]

LOGGER = logging.getLogger(__name__)


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
    from dicom_node.parent_process import signal_when_parent_dies
    from engines.backends.threads import limit_cpu_threads
    from service.composition import build_worker
    from service.config import ConfigurationError
    from service.pipeline.worker import parse_queues

    context = cli_context(ctx)
    settings = context.settings
    if parent_pid is not None and not signal_when_parent_dies(parent_pid, signal.SIGTERM):
        raise CliError(f"the parent process {parent_pid} is gone: not starting")
    try:
        queue_names = parse_queues(queues)
        worker = build_worker(settings, context.session_factory, queue_names, name=name)
    except (ValueError, ConfigurationError) as exc:
        raise CliError(str(exc)) from exc
    prepare_database(settings)
    check_routing_rules(settings)
    limit_cpu_threads(settings.worker_cpu_threads)
    LOGGER.info("m3edge worker %s: queues %s, broker %s, database %s, model CPU threads %s", worker.name,
                ",".join(queue_names), "embedded" if settings.broker_url is None else settings.broker_url.partition(":")[0],
                settings.effective_database_url.partition(":")[0], settings.worker_cpu_threads or "one per core")
    try:
        worker.run()
    finally:
        context.engine.dispose()
    LOGGER.info("m3edge worker %s stopped", worker.name)
