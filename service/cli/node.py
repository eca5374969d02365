"""``m3edge scp``: the DICOM node on its own (with the recorder, the study assembler, and the pipeline's intake and
sweeper: completed studies are handed to the broker for ``m3edge worker`` processes) until SIGINT or SIGTERM.

``m3edge serve`` (everything in one process) lives in ``service.cli.serve``.
"""

from __future__ import annotations

import logging
import signal
import threading

import typer

from service.cli.context import CliError, cli_context

__all__ = ["node_commands", "scp_command"]

LOGGER = logging.getLogger(__name__)


def _log_study_complete(study_uid: str) -> None:
    LOGGER.info("study %s is complete", study_uid)


def _assembler(settings, session_factory, on_study_complete=_log_study_complete):
    """H2's study assembler when it is available (``service.assembly.build_assembler``), else ``None``."""
    try:
        from service.assembly import build_assembler
    except ImportError:  # pragma: no cover - the assembler ships with the service; only a partial tree lacks it
        LOGGER.warning("service.assembly is not available: studies will not be completed by this process")
        return None
    return build_assembler(settings, session_factory, on_study_complete)


def scp_command(
    ctx: typer.Context,
    assemble: bool = typer.Option(True, help="Also run the study assembler (completes idle or released studies)."),
    pipeline: bool = typer.Option(True, help="Hand completed studies to the pipeline (broker + sweeper) for workers."),
) -> None:
    """Run the DICOM node (Verification + Storage SCP) until SIGINT or SIGTERM.

    Each received instance is durable (journaled, ``dicom_node.intake.journal``) before its success status; its file
    in the spool and its row in the database follow right after.
    An embedded SQLite database is created or upgraded automatically.
    """
    from dicom_node.scp import DicomNode
    from service.cli.serve import prepare_database
    from service.cli.worker import check_routing_rules, pipeline_intake
    from service.ingest import DatabaseRecorder

    context = cli_context(ctx)
    settings = context.settings
    prepare_database(settings)
    from dicom_node.scp.node import receiving_process_settings

    receiving_process_settings()
    sweeper = None
    hook = _log_study_complete
    if pipeline and assemble:
        check_routing_rules(settings)
        intake, sweeper = pipeline_intake(settings, context.session_factory)
        hook = intake.on_study_complete
    recorder = DatabaseRecorder(context.session_factory).start_for_node()
    from service.dicomweb.query_retrieve import QueryRetrieveFactory
    from service.ingest import RecorderFactory

    node = DicomNode(settings, recorder,
                     query_retrieve_factory=QueryRetrieveFactory(settings, context.session_factory),
                     recorder_factory=RecorderFactory(settings.effective_database_url))
    assembler = _assembler(settings, context.session_factory, hook) if assemble else None

    stop_requested = threading.Event()

    def request_stop(signum, _frame) -> None:
        LOGGER.info("%s received: stopping", signal.Signals(signum).name)
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if sweeper is not None:
            sweeper.start()
        if assembler is not None:
            assembler.start()
        try:
            node.start()
        except OSError as exc:
            raise CliError(
                f"cannot listen on {settings.dicom_host}:{settings.dicom_port}: {exc} (set M3EDGE_DICOM_PORT)"
            ) from exc
        LOGGER.info(
            "m3edge scp: AE title %s listening on %s:%d; access: %s; database %s; spool %s",
            settings.dicom_ae_title, settings.dicom_host, node.port, node.access_policy.describe(),
            settings.effective_database_url.partition(":")[0], settings.spool_dir.resolve(),
        )
        while not stop_requested.wait(1.0):
            pass
    finally:
        node.stop()
        if assembler is not None:
            assembler.stop()
        if sweeper is not None:
            sweeper.stop()
        recorder.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        context.engine.dispose()
    LOGGER.info("m3edge scp stopped")


def node_commands(app: typer.Typer) -> None:
    """Register ``scp`` (``serve`` is registered by ``service.cli.serve``)."""
    app.command("scp")(scp_command)
