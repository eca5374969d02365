"""``m3edge db``: the service's database schema."""

from __future__ import annotations

import typer

from service.cli.context import CliError, cli_context

__all__ = ["db_app"]

db_app = typer.Typer(help="Manage the service's database.", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade(ctx: typer.Context, revision: str = typer.Option("head", help="Alembic revision to upgrade to.")) -> None:
    """Create or migrate the database named by DATABASE_URL (SQLite in HOME by default) to the latest schema."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.db.migrate import upgrade_database

    settings = cli_context(ctx).settings
    try:
        upgrade_database(settings.effective_database_url, revision)
    except SQLAlchemyError as exc:
        raise CliError(f"cannot upgrade the database: {exc.__class__.__name__}: {exc.orig if hasattr(exc, 'orig') else exc}") from exc
    typer.echo(f"database at revision {revision}")
