"""``m3edge scp``: the DICOM node on its own (with the recorder, the study assembler, and the pipeline's intake and
sweeper: completed studies are handed to the broker for ``m3edge worker`` processes) until SIGINT or SIGTERM.

The parts come from the composition root (``service.composition.build_service`` without worker and API);
``m3edge serve`` (everything in one process) lives in ``service.cli.serve``.
"""

from __future__ import annotations

import logging

import typer

from service.cli.context import cli_context
from service.cli.serve import run_service
from service.cli.startup import check_routing_rules, prepare_database

__all__ = ["node_commands", "scp_command"]

LOGGER = logging.getLogger(__name__)


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
    from service.composition import build_service

    context = cli_context(ctx)
    settings = context.settings
    prepare_database(settings)
    from dicom_node.scp.node import receiving_process_settings

    receiving_process_settings()
    pipeline = pipeline and assemble  # only an assembled study enters the pipeline
    if pipeline:
        check_routing_rules(settings)
    service, node = build_service(settings, context.session_factory, pipeline=pipeline, worker=False,
                                  assemble=assemble, api=False)

    def started() -> None:
        LOGGER.info(
            "m3edge scp: AE title %s listening on %s:%d; access: %s; database %s; spool %s",
            settings.dicom_ae_title, settings.dicom_host, node.port, node.access_policy.describe(),
            settings.effective_database_url.partition(":")[0], settings.spool_dir.resolve(),
        )

    run_service(context, service, started)
    LOGGER.info("m3edge scp stopped")


def node_commands(app: typer.Typer) -> None:
    """Register ``scp`` (``serve`` is registered by ``service.cli.serve``)."""
    app.command("scp")(scp_command)
