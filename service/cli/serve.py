"""``m3edge serve``: the embedded default, the whole service until SIGINT or SIGTERM.

The composition root (``service.composition.build_service``) builds the parts, each a
:class:`~service.running.ServicePart` started in order and stopped in reverse: the recorder that writes what the node
receives to the database, the pipeline worker (a supervised ``m3edge worker`` child process on every queue: see
``service.worker_process`` for why a process), the pipeline sweeper, the study assembler whose study-complete hook
starts the pipeline, the DICOM node, and the HTTP API (uvicorn in a thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import typer

from service.cli.context import CliContext, CliError, cli_context
from service.cli.startup import check_routing_rules, prepare_database
from service.config import Settings
from service.running import RunningService, ServicePart, ServiceStartError, run_until_signalled

__all__ = ["serve_commands", "run_service", "ensure_models", "ServicePart", "RunningService", "prepare_database"]

LOGGER = logging.getLogger(__name__)


def serve_command(ctx: typer.Context) -> None:
    """Run the whole service until SIGINT or SIGTERM (the embedded default: no outside service needed).

    Starts the DICOM node, the recorder that writes what it receives to the database (SQLite in HOME unless
    DATABASE_URL says otherwise; SQLite is upgraded automatically), the study assembler, the pipeline (a worker
    process on every queue, the sweeper; the broker is a SQLite file in HOME unless BROKER_URL says otherwise) and
    the HTTP API on API_HOST:API_PORT."""
    from service.composition import build_service

    context = cli_context(ctx)
    settings = context.settings
    prepare_database(settings)
    check_routing_rules(settings)
    ensure_models(settings)
    service, node = build_service(settings, context.session_factory)

    def started() -> None:
        LOGGER.info(
            "m3edge serving: DICOM %s on %s:%d, API %s://%s:%d, database %s, broker %s, study idle %g s; "
            "stop with Ctrl-C or SIGTERM",
            settings.dicom_ae_title, settings.dicom_host, node.port, "https" if settings.api_tls else "http",
            settings.api_host, settings.api_port,
            settings.effective_database_url.partition(":")[0],
            "embedded" if settings.broker_url is None else settings.broker_url.partition(":")[0],
            settings.study_idle_seconds,
        )

    run_service(context, service, started)
    LOGGER.info("m3edge stopped")


def run_service(context: CliContext, service: RunningService, on_started: Callable[[], object]) -> None:
    """Run ``service`` until SIGINT or SIGTERM (``serve`` and ``scp``); a part that cannot start is a CliError."""
    settings = context.settings
    try:
        run_until_signalled(service, on_started)
    except ServiceStartError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(
            f"cannot listen on {settings.dicom_host}:{settings.dicom_port}: {exc} (set M3EDGE_DICOM_PORT)"
        ) from exc
    finally:
        context.engine.dispose()


def ensure_models(settings: Settings, writer: Callable[[Path], object] | None = None) -> bool:
    """The embedded default runs out of the box: with no models installed, write the DEMO models (and say so).

    Returns True when it wrote them. Every report made with them says DEMO."""
    from engines.model_store.layout import ModelsDirectory

    if not settings.demo_models_when_empty or ModelsDirectory(settings.models_dir).installed():
        return False
    LOGGER.warning("no models in %s: writing the DEMO models (tiny, random weights; every report says DEMO). "
                   "Install real ones with `m3edge models import`.", settings.models_dir)
    if writer is None:
        from engines.model_store.demo import write_demo_models as writer
    writer(settings.models_dir)
    return True


def serve_commands(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
