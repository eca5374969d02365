"""``MetadataKeeper``: each received instance's DICOM JSON, kept in its row once its study has gone quiet.

WADO-RS metadata of a study is the documents kept in ``instances.dicom_json`` joined (``metadata_documents``), and QIDO
``includefield`` reads them; rendering one is a header parse and a JSON walk by pydicom: 2.5 ms of CPU for a CT slice
on this 2-core machine. Done by the receiving process while it filed each instance (migration 0010), it took that
process's interpreter from the next C-STORE: one association of a 400-slice CT went 67 -> 82 MB/s (8 senders 120 ->
136 MB/s, ``bench.ingest``, same machine) once it moved here. So the node only receives, and this keeper, a thread in
the process that runs the node (``m3edge serve`` / ``m3edge scp``, never a receiving process), fills the rows after
the fact: rows whose study has received nothing for ``quiet_seconds`` (ingest of that study is over or paused, so the
work never competes with a transfer), oldest first, a batch per transaction. It also fills the rows of instances
received before migration 0010.

Until a row is filled, WADO-RS reads that instance's file (the same document, computed per request and cached);
``includefield`` leaves the attributes out. A header pydicom cannot render is marked with an empty value
(:data:`UNREADABLE`) so it is tried once, and is served from its file like the others. Patient attributes are in the
documents: they are served to signed-in users only (audited) and never logged here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.dicomweb import stored_metadata
from service.db.models import Instance, Series, Study
from service.db.session import session_scope

__all__ = ["MetadataKeeper", "UNREADABLE", "QUIET_SECONDS"]

LOGGER = logging.getLogger(__name__)

UNREADABLE = b""  # kept for an instance whose header could not be rendered: read from its file when asked
QUIET_SECONDS = 2.0  # a study that received nothing for this long gets its metadata kept
_BATCH = 64
_INTERVAL_SECONDS = 1.0


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class MetadataKeeper:
    """Fills ``instances.dicom_json`` in the background (see the module docstring). ``start``/``stop``;
    :meth:`keep_pending` does one pass (tests, and the thread)."""

    def __init__(
        self, session_factory: sessionmaker[Session], spool_root: Path, *, quiet_seconds: float = QUIET_SECONDS,
        interval_seconds: float = _INTERVAL_SECONDS, batch: int = _BATCH, clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.session_factory = session_factory
        self.spool_root = Path(spool_root)
        self.quiet_seconds = quiet_seconds
        self.interval_seconds = interval_seconds
        self.batch = batch
        self.clock = clock
        self.kept = 0  # documents kept since start (unreadable headers included)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> MetadataKeeper:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="metadata-keeper", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(30)

    def keep_pending(self, *, quiet_seconds: float | None = None) -> int:
        """Keep the metadata of every waiting instance of a quiet study (``quiet_seconds``: the keeper's unless
        given; 0 for every study); return how many were kept."""
        quiet = self.quiet_seconds if quiet_seconds is None else quiet_seconds
        kept = 0
        while not self._stop.is_set():
            done = self._keep_batch(self.clock() - timedelta(seconds=quiet))
            kept += done
            if done < self.batch:
                break
        return kept

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.keep_pending()
            except Exception:  # noqa: BLE001 - a database away: WADO-RS reads files meanwhile; try again later
                LOGGER.exception("could not keep instance metadata; trying again in %g s", self.interval_seconds)
            self._stop.wait(self.interval_seconds)

    def _keep_batch(self, quiet_since: datetime) -> int:
        with session_scope(self.session_factory) as session:
            waiting = session.execute(
                select(Instance.id, Instance.path)
                .join(Series, Series.id == Instance.series_id).join(Study, Study.id == Series.study_id)
                .where(Instance.dicom_json.is_(None), Instance.other_patient.is_(False),
                       Study.last_received_at <= quiet_since)
                .order_by(Instance.id).limit(self.batch)
            ).all()
        if not waiting:
            return 0
        documents = [{"row": row_id, "kept": self._document(path)} for row_id, path in waiting]
        with session_scope(self.session_factory) as session:
            for document in documents:  # only rows still waiting: a reprocess or a second keeper may have been first
                session.execute(update(Instance)
                                .where(Instance.id == document["row"], Instance.dicom_json.is_(None))
                                .values(dicom_json=document["kept"])
                                .execution_options(synchronize_session=False))
        self.kept += len(documents)
        return len(documents)

    def _document(self, relative_path: str) -> bytes:
        path = (self.spool_root / relative_path).resolve()
        if not path.is_relative_to(self.spool_root.resolve()):
            return UNREADABLE
        kept = stored_metadata(path)  # logs (without patient data) and returns None when it cannot render it
        return UNREADABLE if kept is None else kept
