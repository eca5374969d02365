"""What a command checks before it starts a part of the service: the database is at the code's revision (SQLite is
upgraded in place), and the routing rules are valid."""

from __future__ import annotations

from service.cli.context import CliError
from service.config import Settings

__all__ = ["prepare_database", "check_routing_rules"]


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


def check_routing_rules(settings: Settings) -> None:
    """Refuse to start on invalid routing rules; the error names every problem's line and field."""
    from service.routing import RoutingRulesError
    from service.routing.store import RoutingRulesStore

    try:
        RoutingRulesStore(settings).load()
    except RoutingRulesError as exc:
        raise CliError(str(exc)) from exc
