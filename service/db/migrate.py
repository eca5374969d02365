"""Alembic, driven from code: ``m3edge db upgrade`` and the tests use the same path."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from service.db.session import create_sqlite_file

__all__ = ["alembic_config", "upgrade_database"]


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Bring the schema at ``database_url`` to ``revision`` (creating a SQLite file, private, if needed)."""
    if database_url.startswith("sqlite"):
        create_sqlite_file(database_url)
    command.upgrade(alembic_config(database_url), revision)
