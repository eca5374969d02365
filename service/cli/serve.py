"""``m3edge serve``: the embedded default, the whole service until SIGINT or SIGTERM.

The parts start in order and stop in reverse, each a :class:`ServicePart` (a name, how to start it, how to stop it):
the recorder that writes what the node receives to the database, the pipeline worker (a supervised ``m3edge worker``
child process on every queue: see ``service.cli.worker.WorkerProcess`` for why a process), the pipeline sweeper, the
study assembler whose study-complete hook starts the pipeline, the DICOM node, and the HTTP API (uvicorn in a thread).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from service.cli.context import CliError, cli_context
from service.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from dicom_node.scp import DicomNode

__all__ = ["serve_commands", "ServicePart", "RunningService", "build_service", "prepare_database"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServicePart:
    """One part of the running service: how to start it and how to stop it."""

    name: str
    start: Callable[[], object]
    stop: Callable[[], object]


class RunningService:
    """Parts started in order and stopped in reverse; a part that fails to start stops those already running."""

    def __init__(self, parts: list[ServicePart]) -> None:
        self.parts = parts
        self._started: list[ServicePart] = []

    def start(self) -> None:
        try:
            for part in self.parts:
                part.start()
                self._started.append(part)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        started, self._started = self._started, []
        for part in reversed(started):
            try:
                part.stop()
            except Exception:  # keep stopping the others
                LOGGER.exception("stopping the %s failed", part.name)


def prepare_database(settings: Settings) -> None:
    """Upgrade an SQLite database in place (the embedded default); refuse to start on an outdated server database."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import SQLAlchemyError

    from service.db.migrate import alembic_config, upgrade_database
    from service.db.session import create_db_engine

    url = settings.effective_database_url
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        if url.startswith("sqlite"):
            upgrade_database(url)
            return
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        engine = create_db_engine(url)
        try:
            with engine.connect() as connection:
                current = MigrationContext.configure(connection).get_current_revision()
        finally:
            engine.dispose()
    except SQLAlchemyError as exc:
        raise CliError(f"cannot open the database: {exc.__class__.__name__}: {getattr(exc, 'orig', exc)}") from exc
    if current != head:
        raise CliError(f"the database is at revision {current or 'none'}, not {head}: run `m3edge db upgrade` first")


def _log_study_complete(study_uid: str) -> None:
    LOGGER.info("study %s is complete", study_uid)


class ApiThread:
    """The HTTP API (``service.api.app.create_app``) served by uvicorn in a thread of this process."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session], intake) -> None:
        import uvicorn

        from service.api.app import create_app
        from service.api.server import uvicorn_options

        app = create_app(settings, session_factory, intake)
        self.server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **uvicorn_options(settings)))
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; refuse (CliError) when uvicorn could not listen, instead of running without the API."""
        config = self.server.config
        self._thread = threading.Thread(target=self.server.run, name="m3edge-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(0.05)
        if not self.server.started:
            self.stop()
            raise CliError(f"the HTTP API could not listen on {config.host}:{config.port} (set M3EDGE_API_HOST and "
                           "M3EDGE_API_PORT)")

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)


def build_service(
    settings: Settings,
    session_factory: sessionmaker[Session],
    on_study_complete: Callable[[str], object] | None = None,
    *,
    pipeline: bool = True,
    worker: bool = True,
    api: bool = True,
) -> tuple[RunningService, DicomNode]:
    """The parts of the embedded service; returns it and the DICOM node (whose ``port`` is known once started).

    ``pipeline``: completed studies enter the pipeline (hook + sweeper); ``worker``: run a worker child process;
    ``api``: serve the HTTP API. ``on_study_complete`` replaces the pipeline's hook (tests)."""
    from dicom_node.scp import DicomNode
    from service.assembly import build_assembler
    from service.ingest import DatabaseRecorder

    parts = []
    recorder = DatabaseRecorder(session_factory)
    parts.append(ServicePart("database recorder", recorder.start_for_node, recorder.close))
    intake = None
    hook = on_study_complete or _log_study_complete
    if pipeline:
        from service.cli.worker import WorkerProcess, pipeline_intake

        intake, sweeper = pipeline_intake(settings, session_factory)
        hook = on_study_complete or intake.on_study_complete
        if worker:
            child = WorkerProcess()
            parts.append(ServicePart("pipeline worker", child.start, child.stop))
        parts.append(ServicePart("pipeline sweeper", sweeper.start, sweeper.stop))
    assembler = build_assembler(settings, session_factory, hook)
    from service.dicomweb.query_retrieve import QueryRetrieveFactory
    from service.ingest import RecorderFactory

    node = DicomNode(settings, recorder, query_retrieve_factory=QueryRetrieveFactory(settings, session_factory),
                     recorder_factory=RecorderFactory(settings.effective_database_url))
    parts += [
        ServicePart("study assembler", assembler.start, assembler.stop),
        ServicePart("DICOM node", node.start, node.stop),
    ]
    if api:
        server = ApiThread(settings, session_factory, intake)
        parts.append(ServicePart("HTTP API", server.start, server.stop))
    return RunningService(parts), node


def serve_command(ctx: typer.Context) -> None:
    """Run the whole service until SIGINT or SIGTERM (the embedded default: no outside service needed).

    Starts the DICOM node, the recorder that writes what it receives to the database (SQLite in HOME unless
    DATABASE_URL says otherwise; SQLite is upgraded automatically), the study assembler, the pipeline (a worker
    process on every queue, the sweeper; the broker is a SQLite file in HOME unless BROKER_URL says otherwise) and
    the HTTP API on API_HOST:API_PORT."""
    context = cli_context(ctx)
    settings = context.settings
    prepare_database(settings)
    from service.cli.worker import check_routing_rules

    check_routing_rules(settings)
    ensure_models(settings)
    service, node = build_service(settings, context.session_factory)

    stop_requested = threading.Event()

    def request_stop(signum, _frame) -> None:
        LOGGER.info("%s received: stopping", signal.Signals(signum).name)
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            service.start()
        except OSError as exc:
            raise CliError(
                f"cannot listen on {settings.dicom_host}:{settings.dicom_port}: {exc} (set M3EDGE_DICOM_PORT)"
            ) from exc
        LOGGER.info(
            "m3edge serving: DICOM %s on %s:%d, API %s://%s:%d, database %s, broker %s, study idle %g s; "
            "stop with Ctrl-C or SIGTERM",
            settings.dicom_ae_title, settings.dicom_host, node.port, "https" if settings.api_tls else "http",
            settings.api_host, settings.api_port,
            settings.effective_database_url.partition(":")[0],
            "embedded" if settings.broker_url is None else settings.broker_url.partition(":")[0],
            settings.study_idle_seconds,
        )
        while not stop_requested.wait(1.0):
            pass
    finally:
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        context.engine.dispose()
    LOGGER.info("m3edge stopped")


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
