"""``m3edge api``: the review API and dashboard alone (production runs it beside ``m3edge scp`` and workers)."""

from __future__ import annotations

import typer

from service.cli.context import cli_context
from service.cli.startup import prepare_database

__all__ = ["api_command"]


def api_command(ctx: typer.Context) -> None:
    """Serve the HTTP API on API_HOST:API_PORT until SIGINT or SIGTERM."""
    import uvicorn

    from service.api.server import uvicorn_options
    from service.composition import build_api

    context = cli_context(ctx)
    settings = context.settings
    prepare_database(settings)
    uvicorn.run(build_api(settings, context.session_factory), **uvicorn_options(settings))
