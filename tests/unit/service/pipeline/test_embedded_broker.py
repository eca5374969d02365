"""The embedded broker (kombu's SQLAlchemy transport on HOME/broker.db) through public options only: a message sent
is received, the file is private and in WAL mode, and every connection fsyncs each commit (synchronous=FULL)."""

import sqlite3
import stat

from service.config import Settings
from service.composition import build_pipeline
from service.pipeline.embedded_broker import Transport, connect_sqlite

FULL = 2  # PRAGMA synchronous's number for FULL


def test_a_message_goes_through_the_file_broker_kept_in_wal_mode(tmp_path):
    app = build_pipeline(Settings(home=tmp_path), session_factory=None).app
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        assert connection.transport.polling_interval == 0.05
        queue = connection.SimpleQueue("cpu")
        queue.put({"run_id": 7, "stage": "plan"})
        message = queue.get(timeout=5)
        assert message.payload == {"run_id": 7, "stage": "plan"}
        message.ack()
        queue.close()
    broker = tmp_path / "broker.db"
    assert stat.S_IMODE(broker.stat().st_mode) == 0o600
    with sqlite3.connect(broker) as plain:  # WAL is a property of the file, seen by any later connection
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connect_sqlite(str(broker)).execute("PRAGMA synchronous").fetchone()[0] == FULL
