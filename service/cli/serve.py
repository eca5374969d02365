"""``m3edge serve``: the embedded default, every part of the service in one process until SIGINT or SIGTERM.

The parts start in order and stop in reverse: the study assembler, then the DICOM node (with the recorder that writes
what it receives to the database). The processing worker and the API join this list as they arrive; each is a
:class:`ServicePart` (a name, ``start()``, ``stop()``).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Protocol

import typer

from service.cli.context import CliError, cli_context
from service.config import Settings

__all__ = ["serve_commands", "ServicePart", "RunningService", "prepare_database", "describe_access"]

LOGGER = logging.getLogger(__name__)


class ServicePart(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class RunningService:
    """Named parts started in order and stopped in reverse; a part that fails to start stops those already running."""

    def __init__(self, parts: list[tuple[str, ServicePart]]) -> None:
        self.parts = parts
        self._started: list[tuple[str, ServicePart]] = []

    def start(self) -> None:
        try:
            for name, part in self.parts:
                part.start()
                self._started.append((name, part))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        started, self._started = self._started, []
        for name, part in reversed(started):
            try:
                part.stop()
            except Exception:  # keep stopping the others
                LOGGER.exception("stopping the %s failed", name)
            else:
                LOGGER.info("%s stopped", name)


def prepare_database(settings: Settings) -> None:
    """Upgrade an SQLite database in place (the embedded default); refuse to start on an outdated server database."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import SQLAlchemyError

    from service.db.migrate import alembic_config, upgrade_database
    from service.db.session import create_db_engine

    url = settings.effective_database_url
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


def describe_access(settings: Settings) -> str:
    if not settings.dicom_allowed_aes:
        return "only callers on this machine (loopback) may associate; set M3EDGE_DICOM_ALLOWED_AES to admit your PACS"
    return "calling AE titles allowed: " + ", ".join(str(caller) for caller in settings.dicom_allowed_aes)


def _log_study_complete(study_uid: str) -> None:
    LOGGER.info("study %s is complete", study_uid)


def build_service(
    settings: Settings, session_factory, on_study_complete: Callable[[str], None] = _log_study_complete
) -> tuple[RunningService, object]:
    """The parts of the embedded service; returns it and the DICOM node (whose ``port`` is known once started)."""
    from dicom_node.scp import DicomNode
    from service.assembly import build_assembler
    from service.ingest import DatabaseRecorder

    node = DicomNode(settings, DatabaseRecorder(session_factory))
    assembler = build_assembler(settings, session_factory, on_study_complete)
    return RunningService([("study assembler", assembler), ("DICOM node", node)]), node


def serve_command(ctx: typer.Context) -> None:
    """Run the service in one process until SIGINT or SIGTERM (the embedded default: no outside service needed).

    Starts the DICOM node, the recorder that writes what it receives to the database (SQLite in HOME unless
    DATABASE_URL says otherwise; SQLite is upgraded automatically) and the study assembler."""
    context = cli_context(ctx)
    settings = context.settings
    prepare_database(settings)
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
            "m3edge serving: DICOM %s on %s:%s; database %s; spool %s",
            settings.dicom_ae_title, settings.dicom_host, getattr(node, "port", settings.dicom_port),
            settings.effective_database_url.partition(":")[0], settings.spool_dir.resolve(),
        )
        LOGGER.info("DICOM access: %s", describe_access(settings))
        while not stop_requested.wait(1.0):
            pass
    finally:
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        context.engine.dispose()
    LOGGER.info("m3edge stopped")


def serve_commands(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
