"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file in HOME, with a short polling interval.

kombu passes every transport option to ``create_engine`` (including ``polling_interval``, which SQLAlchemy refuses),
so this subclass takes the polling interval out first. Messages lost with a crashed process are re-sent by the
pipeline's sweeper: the database, not the broker, holds the pipeline's state.
"""

from __future__ import annotations

from kombu.transport import sqlalchemy as kombu_sqlalchemy
from sqlalchemy import create_engine

__all__ = ["Transport", "TRANSPORT_PATH"]

TRANSPORT_PATH = "service.pipeline.embedded_broker:Transport"
_NOT_FOR_THE_ENGINE = ("queue_tablename", "message_tablename", "callback", "errback", "max_retries", "interval_start",
                       "interval_step", "interval_max", "retry_errors", "polling_interval", "visibility_timeout")


class Channel(kombu_sqlalchemy.Channel):
    def _engine_from_config(self):
        conninfo = self.connection.client
        options = {k: v for k, v in conninfo.transport_options.items() if k not in _NOT_FOR_THE_ENGINE}
        options.setdefault("connect_args", {"timeout": 30})
        return create_engine(conninfo.hostname, **options)


class Transport(kombu_sqlalchemy.Transport):
    Channel = Channel
