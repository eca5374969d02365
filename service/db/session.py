"""The database engine (made once per process) and the unit-of-work scope."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.private_files import SECRET_FILE_MODE, create_private_file

__all__ = ["create_db_engine", "make_session_factory", "session_scope", "create_sqlite_file"]


def create_sqlite_file(url: str) -> None:
    """Create a SQLite database file (and its folders) private to the service (0600: users' password hashes, the audit
    log) before SQLite makes it 0644; SQLite gives its WAL and shared-memory files the database file's mode."""
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        create_private_file(database, SECRET_FILE_MODE)


def create_db_engine(url: str, **kwargs) -> Engine:
    """An engine for ``url``; SQLite gets WAL, full fsync and a busy timeout so several processes can share it."""
    if url.startswith("sqlite"):
        create_sqlite_file(url)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - exercised via every sqlite test
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
