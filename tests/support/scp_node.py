"""A running ``DicomNode`` with the database recorder, on a free loopback port, for the node's integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.intake import SpoolWriter
from dicom_node.scp import DicomNode
from service.config import Settings
from service.db.models import Instance, Series, Study
from service.ingest import DatabaseRecorder

__all__ = ["running_node", "instances_in_db", "study_row", "node_settings", "settle"]

# The nodes running_node started and not yet stopped: a success status means "journaled"; the file and row follow
# in the background (dicom_node.intake.journal), so the readers below first wait until those are done.
_RUNNING: list[DicomNode] = []


def settle(timeout: float = 60.0) -> None:
    """Wait until every instance the running nodes (one receiving process each) acknowledged has its row."""
    for node in list(_RUNNING):
        assert node.wait_until_recorded(timeout), "the node did not file its journaled instances in time"


def node_settings(home: Path, **overrides) -> Settings:
    # one receiving process unless a test asks for more: most tests hand the node in-process doubles (spool,
    # recorder, clock) that only a single process uses
    values = {"home": home, "dicom_host": "127.0.0.1", "dicom_port": 0, "spool_reserve_bytes": 0, "dicom_receivers": 1}
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_node(
    home: Path, session_factory: sessionmaker[Session], *, spool: SpoolWriter | None = None, **overrides
) -> Iterator[DicomNode]:
    recorder = DatabaseRecorder(session_factory).start()
    node = DicomNode(node_settings(home, **overrides), recorder, spool=spool)
    node.start()
    _RUNNING.append(node)
    try:
        yield node
    finally:
        _RUNNING.remove(node)
        node.stop()
        recorder.close()


def instances_in_db(session_factory: sessionmaker[Session]) -> list[tuple[Instance, Series, Study]]:
    settle()
    with session_factory() as session:
        rows = session.execute(
            select(Instance, Series, Study).join(Series, Instance.series_id == Series.id).join(
                Study, Series.study_id == Study.id
            ).order_by(Instance.id)
        ).all()
        return [tuple(row) for row in rows]


def study_row(session_factory: sessionmaker[Session], study_uid: str) -> Study | None:
    settle()
    with session_factory() as session:
        return session.scalars(select(Study).where(Study.study_uid == study_uid)).one_or_none()
