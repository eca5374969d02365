"""``m3edge``: one entry point, a sub-command per job. Settings are built here, once, and passed down."""

from __future__ import annotations

import sys

import typer

from service.cli.api import api_command
from service.cli.context import CliContext, CliError
from service.cli.db import db_app
from service.cli.doctor import doctor_command
from service.cli.models import engines_app, models_app
from service.cli.node import node_commands
from service.cli.peers import peer_commands
from service.cli.serve import serve_commands
from service.cli.routes import routes_app
from service.cli.studies import studies_app
from service.cli.users import users_app
from service.cli.vlm import vlm_app
from service.cli.worker import worker_command
from service.config import ConfigurationError

__all__ = ["app", "main"]

app = typer.Typer(
    name="m3edge",
    help="VILA-M3 at the edge of your PACS: DICOM node, expert models, VLM agent, structured reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # paragraphs of a docstring reflow to the terminal; `code` renders as code
)
app.add_typer(db_app, name="db")
app.add_typer(studies_app, name="studies")
app.add_typer(models_app, name="models")
app.add_typer(engines_app, name="engines")
app.add_typer(routes_app, name="routes")
app.add_typer(users_app, name="users")
app.add_typer(vlm_app, name="vlm")
app.command("api")(api_command)
app.command("doctor")(doctor_command)
app.command("worker")(worker_command)
node_commands(app)
serve_commands(app)
peer_commands(app)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Settings come from M3EDGE_* environment variables, or the YAML file named by M3EDGE_CONFIG."""
    from dicom_node.private_files import restrict_umask

    restrict_umask()  # what any library creates under HOME for us (and our children) is 0640/0750 at most
    ctx.obj = CliContext.create()


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except CliError as exc:
        print(f"m3edge: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ConfigurationError as exc:  # found while building a part (STAGE_TIME_LIMITS, say)
        print(f"m3edge: error: invalid configuration: {exc}", file=sys.stderr)
        sys.exit(2)
