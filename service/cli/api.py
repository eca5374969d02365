"""``m3edge api``: the review API and dashboard alone (production runs it beside ``m3edge scp`` and workers)."""

from __future__ import annotations

import typer

from service.cli.context import cli_context

__all__ = ["api_command"]


def api_command(ctx: typer.Context) -> None:
    """Serve the HTTP API on API_HOST:API_PORT until SIGINT or SIGTERM."""
    import uvicorn

    from service.api.app import create_app
    from service.api.server import uvicorn_options
    from service.cli.serve import prepare_database

    context = cli_context(ctx)
    settings = context.settings
    prepare_database(settings)
    app = create_app(settings, context.session_factory)
    uvicorn.run(app, **uvicorn_options(settings))
