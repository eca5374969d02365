"""Throw-away PostgreSQL databases for tests (the server is the machine's; each test session gets its own database)."""

from __future__ import annotations

import os

import sqlalchemy
from sqlalchemy import text

from service.db.session import create_db_engine

__all__ = ["POSTGRES_ADMIN_URL", "create_postgres_database", "drop_postgres_database"]

POSTGRES_ADMIN_URL = os.environ.get("M3EDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def create_postgres_database(name: str) -> str:
    admin = create_db_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return str(sqlalchemy.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False))


def drop_postgres_database(name: str) -> None:
    admin = create_db_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
