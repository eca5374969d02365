"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file in HOME, polled every 50 ms, in WAL mode.

Only public interfaces: kombu passes its transport options to :func:`sqlalchemy.create_engine` (its documented
behaviour), so the options here are ``create_engine`` arguments, and ``creator`` (a public ``create_engine`` argument)
opens each SQLite connection with the pragmas the service's own database uses: WAL and ``synchronous=FULL``, so every
commit (a message sent or taken) is on disk when it returns. (SQLite's default rollback journal with ``FULL`` can lose
the last commit in a power cut: the journal's unlink is the commit and only ``EXTRA`` syncs the folder after it; see
tests/support/powerloss/README.md.) The polling interval is the transport's public class attribute: as a transport
option it would reach ``create_engine``, which refuses it. Messages lost with a crashed process are re-sent by the
pipeline's sweeper: the database, not the broker, holds the pipeline's state.
"""

from __future__ import annotations

import sqlite3
from functools import partial
from pathlib import Path
from typing import Any

from kombu.transport import sqlalchemy as kombu_sqlalchemy

from dicom_node.private_files import SECRET_FILE_MODE, create_private_file

__all__ = ["Transport", "TRANSPORT_PATH", "embedded_broker", "SQLITE_PRAGMAS"]

TRANSPORT_PATH = "service.pipeline.embedded_broker:Transport"
SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA busy_timeout=30000")


class Transport(kombu_sqlalchemy.Transport):
    """kombu's SQLAlchemy transport, polling its table every 50 ms (1 s by default) so a stage starts promptly."""

    polling_interval = 0.05


def connect_sqlite(path: str) -> sqlite3.Connection:
    """A connection to the broker file with WAL, full fsync and a 30 s busy timeout (several processes share it)."""
    connection = sqlite3.connect(path, timeout=30, check_same_thread=False)
    for pragma in SQLITE_PRAGMAS:
        connection.execute(pragma)
    return connection


def embedded_broker(home: Path) -> tuple[str, dict[str, Any]]:
    """The broker URL and transport options for the SQLite file ``HOME/broker.db`` (made private, 0600, first)."""
    path = home / "broker.db"
    create_private_file(path, SECRET_FILE_MODE)  # SQLite keeps this mode for the file and its WAL
    resolved = str(path.resolve())
    return f"sqlite:///{resolved}", {"creator": partial(connect_sqlite, resolved)}
