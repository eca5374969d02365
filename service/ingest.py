"""The database side of the DICOM node: records what the node stored, with group commit.

``DatabaseRecorder`` implements ``dicom_node.intake.recording.InstanceRecorder``. Every C-STORE handler thread hands its
instance to one writer thread and waits; the writer takes everything that queued up meanwhile, applies it in one
transaction and commits once, then wakes each waiter. So many concurrent C-STOREs share one commit (and one fsync),
yet each C-STORE answers success only after its own row is committed. A batch that fails is retried item by item,
so one bad row cannot fail its neighbours.

Study state written here (the assembler reads it): a new study starts 'receiving' with first_received_at = opened_at =
now; every new instance sets last_received_at; an instance for a study in any other state re-opens it (status
'receiving', opened_at = now, reprocess_requested). A re-send of bytes already recorded changes nothing.
Patient context (name, ID, accession number) is kept per study from the first instance that carries it, for signed-in
reviewers; it is never logged. An instance whose Patient ID differs from its study's is recorded (its sender was told
success) but flagged (``flag_study_patient_collision``): the study is never processed as one patient's.
The instance's header as DICOM JSON (patient attributes included) is kept in ``instances.dicom_json`` afterwards, by
``service.dicomweb.metadata_keeper`` (off the receiving processes), for WADO-RS and QIDO ``includefield``, which
serve it to signed-in users only, audited; it never reaches a log.

Identity: a series is (study, Series Instance UID) and an instance lives in its study's series. A Series or SOP
Instance UID that arrives in a second study is stored under that study like any other and flagged
(``service.uid_collisions``): two patients' images are never filed together.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import bindparam, case, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.intake.recording import ReceivedInstance, RecorderError
from service.db.models import Instance, Series, Study, StudyStatus
from service.uid_collisions import flag_instance_collisions, flag_series_collision, flag_study_patient_collision

__all__ = ["DatabaseRecorder"]

LOGGER = logging.getLogger(__name__)

_MODALITIES_LENGTH = 64


@dataclass
class _Job:
    instances: list[ReceivedInstance] = field(default_factory=list)
    ended: tuple[Collection[str], datetime] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    on_done: Callable[[BaseException | None], None] | None = None  # called by the writer thread after the commit


def _merge_modalities(current: str, modality: str) -> str:
    if not modality:
        return current
    values = {m for m in current.split("\\") if m} | {modality}
    merged = "\\".join(sorted(values))
    return merged if len(merged) <= _MODALITIES_LENGTH else current


@dataclass
class _KnownStudy:
    id: int
    modalities: str
    has_description: bool
    has_date: bool
    patient_id: str | None = None  # None: not known yet (a study from before 0009, or none of its instances had one)
    has_patient_name: bool = False
    has_accession: bool = False
    patient_collision: bool = False  # flagged by this writer already


_STUDY_COLUMNS = (Study.id, Study.modalities, Study.study_description, Study.study_date, Study.patient_id,
                  Study.patient_name, Study.accession_number)


def _known(row) -> _KnownStudy:
    id_, modalities, description, date, patient_id, patient_name, accession = row
    return _KnownStudy(id_, modalities or "", bool(description), bool(date), patient_id or None, bool(patient_name),
                       bool(accession))


class _Catalog:
    """Ids of studies and series the writer has seen, so a batch for a known series costs two statements.

    Only the writer thread uses it; it is cleared whenever a transaction fails (a rolled-back insert may be cached).
    """

    def __init__(self) -> None:
        self.studies: dict[str, _KnownStudy] = {}
        self.series: dict[tuple[str, str], int] = {}  # (study UID, series UID) -> id

    def clear(self) -> None:
        self.studies.clear()
        self.series.clear()

    def load_studies(self, connection: Connection, instances: list[ReceivedInstance]) -> None:
        missing = {i.study_uid for i in instances} - self.studies.keys()
        if missing:
            rows = connection.execute(select(Study.study_uid, *_STUDY_COLUMNS).where(Study.study_uid.in_(missing)))
            for uid, *row in rows:
                self.studies[uid] = _known(row)
        for instance in instances:
            if instance.study_uid not in self.studies:
                now = instance.received_at
                id_ = connection.execute(
                    _insert_unless_present(connection, Study, Study.study_uid)
                    .values(
                        study_uid=instance.study_uid, status=StudyStatus.RECEIVING, first_received_at=now,
                        opened_at=now, last_received_at=now, modalities=instance.modality[:16],
                        study_description=instance.study_description, study_date=instance.study_date,
                        calling_ae=instance.calling_ae, reprocess_requested=False,
                        patient_name=instance.patient_name, patient_id=instance.patient_id,
                        accession_number=instance.accession_number,
                    )
                    .returning(Study.id)
                ).scalar_one_or_none()
                if id_ is None:  # another writer (a receiving process, STOW-RS) created it since the SELECT above
                    row = connection.execute(
                        select(*_STUDY_COLUMNS).where(Study.study_uid == instance.study_uid)).one()
                    self.studies[instance.study_uid] = _known(row)
                    continue
                self.studies[instance.study_uid] = _KnownStudy(
                    id_, instance.modality[:16], bool(instance.study_description), bool(instance.study_date),
                    instance.patient_id or None, bool(instance.patient_name), bool(instance.accession_number),
                )

    def load_series(self, connection: Connection, instances: list[ReceivedInstance]) -> None:
        """Series ids by (study, series UID): a series belongs to its study. A series UID already stored under
        another study gets a row of its own here, and a ``UidCollision`` flag (``flag_series_collision``)."""
        missing = {(i.study_uid, i.series_uid) for i in instances} - self.series.keys()
        if missing:
            study_uids = {self.studies[study_uid].id: study_uid for study_uid, _ in missing}
            rows = connection.execute(
                select(Series.study_id, Series.series_uid, Series.id).where(
                    Series.series_uid.in_({series_uid for _, series_uid in missing}),
                    Series.study_id.in_(study_uids),
                )
            )
            self.series.update({(study_uids[study_id], uid): id_ for study_id, uid, id_ in rows})
        for instance in instances:
            key = (instance.study_uid, instance.series_uid)
            if key in self.series:
                continue
            study_id = self.studies[instance.study_uid].id
            id_ = connection.execute(
                _insert_unless_present(connection, Series, Series.study_id, Series.series_uid)
                .values(
                    study_id=study_id, series_uid=instance.series_uid,
                    modality=instance.modality, series_description=instance.series_description,
                    series_number=instance.series_number, body_part_examined=instance.body_part_examined,
                    created_at=instance.received_at,
                )
                .returning(Series.id)
            ).scalar_one_or_none()
            if id_ is None:  # created by another writer meanwhile
                id_ = connection.execute(
                    select(Series.id).where(Series.study_id == study_id, Series.series_uid == instance.series_uid)
                ).scalar_one()
            else:
                flag_series_collision(connection, instance, study_id)
            self.series[key] = id_


def _insert_unless_present(connection: Connection, model, *unique_columns):
    """INSERT that does nothing (and returns no row) when ``unique_columns`` already hold the values: several writers
    (receiving processes, STOW-RS) may create the same study or series at once, and none of them may fail for it."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(model).on_conflict_do_nothing(index_elements=list(unique_columns))


def _fresh_instances(connection: Connection, instances: list[ReceivedInstance]) -> list[ReceivedInstance]:
    """Drop re-sends already recorded (a spool 'duplicate' whose path has a row) and repeats within the batch.

    A 'stored' instance's path was just linked, so it has a row only if the node died after committing it but
    before its directory sync made the name durable; the insert skips that row (``_insert_instances``).
    """
    resent = {i.relative_path for i in instances if i.duplicate}
    recorded = (
        set(connection.execute(select(Instance.path).where(Instance.path.in_(resent))).scalars()) if resent else set()
    )
    fresh = []
    for instance in instances:
        if instance.relative_path not in recorded:
            recorded.add(instance.relative_path)
            fresh.append(instance)
    return fresh


_studies = Study.__table__
_not_receiving = _studies.c.status != StudyStatus.RECEIVING.value
# Built once: per batch and study, one executemany of this statement keeps the hot path out of SQL construction.
_TOUCH_STUDY = (
    update(_studies)
    .where(_studies.c.id == bindparam("study_id"))
    .values(
        last_received_at=bindparam("now"),
        opened_at=case((_not_receiving, bindparam("now")), else_=_studies.c.opened_at),
        reprocess_requested=case((_not_receiving, True), else_=_studies.c.reprocess_requested),
        status=StudyStatus.RECEIVING.value,
        calling_ae=func.coalesce(func.nullif(bindparam("calling_ae"), ""), _studies.c.calling_ae),
    )
)
_OPEN_ASSOCIATIONS = (
    update(_studies)
    .where(_studies.c.study_uid == bindparam("uid"))
    .values(open_associations=_studies.c.open_associations + bindparam("count"))
)
_INSERT_INSTANCE: dict[str, object] = {}


def _insert_instances(dialect_name: str):
    """INSERT of instances that skips a path already recorded (SQLite and PostgreSQL: ON CONFLICT DO NOTHING)."""
    statement = _INSERT_INSTANCE.get(dialect_name)
    if statement is None:
        table = Instance.__table__
        if dialect_name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        elif dialect_name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:  # pragma: no cover - the service supports SQLite and PostgreSQL
            statement = _INSERT_INSTANCE[dialect_name] = table.insert()
            return statement
        statement = _INSERT_INSTANCE[dialect_name] = dialect_insert(table).on_conflict_do_nothing(
            index_elements=[table.c.path]
        )
    return statement


def _touch_studies(connection: Connection, catalog: _Catalog, instances: list[ReceivedInstance]) -> None:
    """Per study: last_received_at, re-open a study that had left 'receiving', fill descriptive attributes."""
    latest: dict[str, ReceivedInstance] = {}
    for instance in instances:
        current = latest.get(instance.study_uid)
        if current is None or instance.received_at >= current.received_at:
            latest[instance.study_uid] = instance
    connection.execute(
        _TOUCH_STUDY,
        [
            {"study_id": catalog.studies[uid].id, "now": newest.received_at, "calling_ae": newest.calling_ae}
            for uid, newest in latest.items()
        ],
    )
    for study_uid in latest:  # descriptive attributes change rarely: only then an extra statement
        known = catalog.studies[study_uid]
        values: dict = {}
        modalities = known.modalities
        for instance in instances:
            if instance.study_uid != study_uid:
                continue
            modalities = _merge_modalities(modalities, instance.modality)
            if not known.has_description and instance.study_description:
                values["study_description"] = instance.study_description
                known.has_description = True
            if not known.has_date and instance.study_date:
                values["study_date"] = instance.study_date
                known.has_date = True
            _patient_context(connection, known, instance, values)
        if modalities != known.modalities:
            values["modalities"] = modalities
            known.modalities = modalities
        if values:
            connection.execute(update(_studies).where(_studies.c.id == known.id).values(**values))


def _patient_context(connection: Connection, known: _KnownStudy, instance: ReceivedInstance, values: dict) -> None:
    """Fill the study's patient context from the first instance carrying it; flag a second Patient ID."""
    if instance.patient_id:
        if known.patient_id is None:
            values["patient_id"] = known.patient_id = instance.patient_id
        elif instance.patient_id != known.patient_id and not known.patient_collision:
            flag_study_patient_collision(connection, instance.study_uid, known.id, instance.received_at)
            known.patient_collision = True
            return  # the other patient's name and accession never fill this study's
    if not known.has_patient_name and instance.patient_name:
        values["patient_name"] = instance.patient_name
        known.has_patient_name = True
    if not known.has_accession and instance.accession_number:
        values["accession_number"] = instance.accession_number
        known.has_accession = True


def _other_patient(catalog: _Catalog, instance: ReceivedInstance) -> bool:
    """Does the instance carry another Patient ID than its study (whose first one the catalog holds by now)?"""
    known = catalog.studies[instance.study_uid].patient_id
    return bool(instance.patient_id and known and instance.patient_id != known)


def _count_opened(connection: Connection, instances: list[ReceivedInstance]) -> None:
    """One more open sender per study for each instance that ``opens_association`` (re-sends included)."""
    opened: dict[str, int] = {}
    for instance in instances:
        if instance.opens_association:
            opened[instance.study_uid] = opened.get(instance.study_uid, 0) + 1
    if opened:
        connection.execute(_OPEN_ASSOCIATIONS, [{"uid": uid, "count": count} for uid, count in opened.items()])


def _apply_instances(connection: Connection, catalog: _Catalog, instances: list[ReceivedInstance]) -> None:
    """Upsert studies and series and insert the instances not already recorded (one transaction, no commit)."""
    fresh = _fresh_instances(connection, instances)
    if not fresh:
        _count_opened(connection, instances)
        return
    catalog.load_studies(connection, fresh)
    catalog.load_series(connection, fresh)
    flag_instance_collisions(connection, fresh, {uid: known.id for uid, known in catalog.studies.items()})
    _touch_studies(connection, catalog, fresh)
    connection.execute(
        _insert_instances(connection.dialect.name),
        [
            {
                "series_id": catalog.series[(i.study_uid, i.series_uid)], "sop_instance_uid": i.sop_instance_uid,
                "sop_class_uid": i.sop_class_uid, "transfer_syntax_uid": i.transfer_syntax_uid,
                "path": i.relative_path, "size_bytes": i.size_bytes, "digest": i.digest, "calling_ae": i.calling_ae,
                "received_at": i.received_at, "conflict": i.conflict,
                "other_patient": _other_patient(catalog, i),
            }
            for i in fresh
        ],
    )
    _count_opened(connection, instances)


def _apply_ended(connection: Connection, study_uids: Collection[str], ended_at: datetime) -> None:
    """One sender fewer per study (never below zero: a restart resets the counts) and the time it ended."""
    connection.execute(
        update(_studies)
        .where(_studies.c.study_uid.in_(list(study_uids)))
        .values(
            last_released_at=ended_at,
            open_associations=case(
                (_studies.c.open_associations > 0, _studies.c.open_associations - 1), else_=0
            ),
        )
    )


def reset_open_associations(connection: Connection) -> int:
    """Forget every open sender: no association survives the node's restart (their studies complete by release
    again once a new sender ends, else by the idle timer)."""
    result = connection.execute(update(_studies).where(_studies.c.open_associations != 0).values(open_associations=0))
    if result.rowcount:
        LOGGER.info("%d study(ies) had senders open when the node last stopped; their counts were reset",
                    result.rowcount)
    return int(result.rowcount or 0)


class DatabaseRecorder:
    """Records received instances in the service's database; one writer thread, group commit.

    The writer thread starts on first use (or ``start()``); ``close()`` stops it. Thread-safe.
    """

    def __init__(self, session_factory: sessionmaker[Session], *, max_batch: int = 512, timeout: float = 60.0) -> None:
        engine = session_factory.kw.get("bind")
        if engine is None:
            raise ValueError("DatabaseRecorder needs a sessionmaker bound to an engine (make_session_factory(engine))")
        self._engine: Engine = engine
        self._connection: Connection | None = None
        self._max_batch = max_batch
        self._timeout = timeout
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._catalog = _Catalog()
        self.commits = 0  # how many transactions were committed (tests and the bench read it)

    def start(self) -> DatabaseRecorder:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ingest-recorder", daemon=True)
                self._thread.start()
        return self

    def start_for_node(self) -> DatabaseRecorder:
        """``start()`` for the DICOM node's recorder: first forget the senders a previous run left open."""
        with self._engine.begin() as connection:
            reset_open_associations(connection)
        return self.start()

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout=self._timeout)
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> DatabaseRecorder:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- InstanceRecorder -----------------------------------------------------------------------------------------

    def record(self, instance: ReceivedInstance) -> None:
        self._wait(self._enqueue(_Job(instances=[instance])))

    def begin_record(self, instance: ReceivedInstance) -> Callable[[], None]:
        """Queue ``instance`` for the next commit and return at once; calling the result waits for that commit."""
        job = self._enqueue(_Job(instances=[instance]))
        return lambda: self._wait(job)

    def associations_ended(self, study_uids: Collection[str], ended_at: datetime) -> None:
        if study_uids:
            self._wait(self._enqueue(_Job(ended=(tuple(study_uids), ended_at))))

    def submit(
        self, instance: ReceivedInstance | None, ended: tuple[Collection[str], datetime] | None,
        on_done: Callable[[BaseException | None], None],
    ) -> None:
        """Queue an instance (or an association end) and return at once; the writer thread calls ``on_done(error)``
        after the commit (``error`` is None on success). For callers that must not hold a thread per waiting item
        (the receiving processes' requests arrive on one pipe)."""
        self._enqueue(_Job(instances=[instance] if instance is not None else [], ended=ended, on_done=on_done))

    def _enqueue(self, job: _Job) -> _Job:
        if self._thread is None:
            self.start()  # started on first use, so a recorder handed straight to DicomNode needs no extra call
        self._jobs.put(job)
        return job

    def _wait(self, job: _Job) -> None:
        if not job.done.wait(self._timeout):
            raise RecorderError(f"the database did not commit within {self._timeout:g} s")
        if job.error is not None:
            raise RecorderError(f"cannot record in the database: {job.error.__class__.__name__}") from job.error

    # -- the writer thread ----------------------------------------------------------------------------------------

    def _take_batch(self, first: _Job) -> tuple[list[_Job], bool]:
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is None:
                break
            batch, stopping = self._take_batch(first)
            self._commit(batch)

    def _apply(self, connection: Connection, jobs: Iterable[_Job]) -> None:
        instances = [i for job in jobs for i in job.instances]
        if instances:
            _apply_instances(connection, self._catalog, instances)
        for job in jobs:
            if job.ended is not None:
                _apply_ended(connection, *job.ended)

    def _transaction(self, jobs: list[_Job]) -> None:
        """One transaction on the writer's own connection (kept open: no pool checkout or session per batch)."""
        if self._connection is None:
            self._connection = self._engine.connect()
        try:
            with self._connection.begin():
                self._apply(self._connection, jobs)
        except BaseException:
            self._catalog.clear()
            self._connection.close()  # a broken connection is replaced on the next batch
            self._connection = None
            raise
        self.commits += 1

    def _commit(self, batch: list[_Job]) -> None:
        try:
            self._transaction(batch)
        except SQLAlchemyError as exc:
            if len(batch) == 1:
                self._finish(batch, exc)
                return
            LOGGER.warning("a batch of %d failed (%s); recording its items one by one", len(batch), exc.__class__.__name__)
            for job in batch:
                self._commit_alone(job)
            return
        except Exception as exc:  # noqa: BLE001 - the waiters must always be woken; they fail their C-STOREs
            LOGGER.exception("unexpected error while recording %d job(s)", len(batch))
            self._finish(batch, exc)
            return
        self._finish(batch, None)

    def _commit_alone(self, job: _Job, attempts: int = 2) -> None:
        error: BaseException | None = None
        for _ in range(attempts):  # a second attempt absorbs a race with another writer inserting the same study
            try:
                self._transaction([job])
                error = None
                break
            except SQLAlchemyError as exc:
                error = exc
        if error is not None:
            LOGGER.error("cannot record an instance: %s", error.__class__.__name__)
        self._finish([job], error)

    @staticmethod
    def _finish(jobs: list[_Job], error: BaseException | None) -> None:
        for job in jobs:
            job.error = error
            job.done.set()
            if job.on_done is not None:
                try:
                    job.on_done(error)
                except Exception:  # noqa: BLE001 - one caller's callback must not keep the others waiting
                    LOGGER.exception("a commit callback failed")


def make_recorder(session_factory: sessionmaker[Session]) -> DatabaseRecorder:
    """A started recorder for ``session_factory``."""
    return DatabaseRecorder(session_factory).start()


__all__ += ["make_recorder", "reset_open_associations"]
