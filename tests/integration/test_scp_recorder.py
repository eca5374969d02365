"""``service.ingest.DatabaseRecorder`` against SQLite and PostgreSQL: the study-state contract the assembler reads,
duplicates and conflicts, association bookkeeping, and group commit."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, func, select, update

from pydicom import dcmread

from dicom_node.intake.recording import ReceivedInstance, RecorderError
from service.db.models import Instance, Series, Study, StudyStatus
from service.db.session import create_db_engine, make_session_factory
from service.ingest import DatabaseRecorder
from tests.support.dcmtk import storescu
from tests.support.dicom_corpus import write_ct_series
from tests.support.polling import wait_for
from tests.support.scp_node import instances_in_db, running_node, study_row

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


def _instance(n: int, *, study: str = "1.2.3", series: str = "1.2.3.1", modality: str = "CT", at: datetime = T0,
              duplicate: bool = False, conflict: bool = False, path: str | None = None,
              opens: bool = False) -> ReceivedInstance:
    return ReceivedInstance(
        study_uid=study, series_uid=series, sop_instance_uid=f"{series}.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1", relative_path=path or f"{study}/{series}/{series}.{n}.dcm",
        size_bytes=1000 + n, digest=f"{n:064x}", conflict=conflict, duplicate=duplicate, calling_ae="CT01",
        received_at=at, modality=modality, study_description="CT CHEST", study_date="20260301",
        series_description=f"SERIES {series}", series_number=int(series.rsplit(".", 1)[1]), body_part_examined="CHEST",
        opens_association=opens,
    )


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@pytest.fixture
def recorder(session_factory):
    with DatabaseRecorder(session_factory) as started:
        yield started


def _study(session_factory, uid: str = "1.2.3") -> Study:
    with session_factory() as session:
        return session.scalars(select(Study).where(Study.study_uid == uid)).one()


def test_a_node_recording_through_it_answers_success_only_for_a_committed_row(tmp_path, session_factory):
    """The recorder as the DICOM node uses it (``InstanceRecorder``): dcmtk's storescu stores two instances, each
    success status comes after the row exists, and the association's release reaches the study."""
    series = write_ct_series(tmp_path / "source", 2, seed=11)
    with running_node(tmp_path / "home", session_factory) as node:
        result = storescu(node.port, series.paths)
        assert result.returncode == 0, result.stderr
        assert [row[0].sop_instance_uid for row in instances_in_db(session_factory)] == [
            str(dcmread(path).SOPInstanceUID) for path in series.paths]
        study = wait_for(lambda: (row := study_row(session_factory, series.study_uid)) is not None
                         and row.last_released_at is not None and row, timeout=10,
                         message="the association's release never reached the study")
    assert study.status is StudyStatus.RECEIVING and study.open_associations == 0


def test_a_new_study_starts_receiving_with_its_series_and_instances(recorder, session_factory):
    recorder.record(_instance(1, at=T0))
    recorder.record(_instance(2, at=T0 + timedelta(seconds=5)))
    recorder.record(_instance(1, series="1.2.3.2", modality="SR", at=T0 + timedelta(seconds=9)))
    study = _study(session_factory)
    assert study.status is StudyStatus.RECEIVING
    assert _utc(study.first_received_at) == T0 and _utc(study.opened_at) == T0
    assert _utc(study.last_received_at) == T0 + timedelta(seconds=9)
    assert study.modalities == "CT\\SR" and study.study_description == "CT CHEST" and study.study_date == "20260301"
    assert study.calling_ae == "CT01" and not study.reprocess_requested
    with session_factory() as session:
        series = session.scalars(select(Series).order_by(Series.series_number)).all()
        instances = session.scalars(select(Instance).order_by(Instance.id)).all()
    assert [(s.series_uid, s.modality, s.series_number, s.body_part_examined) for s in series] == [
        ("1.2.3.1", "CT", 1, "CHEST"), ("1.2.3.2", "SR", 2, "CHEST")]
    assert [(i.sop_instance_uid, i.size_bytes, i.path) for i in instances] == [
        ("1.2.3.1.1", 1001, "1.2.3/1.2.3.1/1.2.3.1.1.dcm"), ("1.2.3.1.2", 1002, "1.2.3/1.2.3.1/1.2.3.1.2.dcm"),
        ("1.2.3.2.1", 1001, "1.2.3/1.2.3.2/1.2.3.2.1.dcm")]


@pytest.mark.parametrize("status", [s for s in StudyStatus if s is not StudyStatus.RECEIVING])
def test_an_instance_for_a_study_that_left_receiving_reopens_it_for_reprocessing(recorder, session_factory, status):
    recorder.record(_instance(1, at=T0))
    with session_factory() as session:
        session.execute(update(Study).values(status=status, completed_at=T0 + timedelta(minutes=1)))
        session.commit()
    later = T0 + timedelta(minutes=10)
    recorder.record(_instance(2, at=later))
    study = _study(session_factory)
    assert study.status is StudyStatus.RECEIVING
    assert _utc(study.opened_at) == later and _utc(study.last_received_at) == later
    assert _utc(study.first_received_at) == T0
    assert study.reprocess_requested


def test_a_resend_already_recorded_changes_nothing(recorder, session_factory):
    recorder.record(_instance(1, at=T0))
    with session_factory() as session:
        session.execute(update(Study).values(status=StudyStatus.DONE))
        session.commit()
    recorder.record(_instance(1, at=T0 + timedelta(hours=1), duplicate=True))
    study = _study(session_factory)
    assert study.status is StudyStatus.DONE and not study.reprocess_requested
    with session_factory() as session:
        assert len(session.scalars(select(Instance)).all()) == 1


def test_a_duplicate_whose_row_was_lost_in_a_crash_is_recorded(recorder, session_factory):
    """The file was renamed into the spool but the node died before the commit: the re-send records it."""
    recorder.record(_instance(1, duplicate=True))
    with session_factory() as session:
        assert [i.sop_instance_uid for i in session.scalars(select(Instance))] == ["1.2.3.1.1"]


def test_a_stored_resend_of_a_recorded_path_keeps_one_row(recorder, session_factory):
    """The row was committed while the directory sync ran, then the node died before the name was durable: the
    re-send links the file anew ('stored', not 'duplicate') under the recorded path; it must not fail or double."""
    recorder.record(_instance(1, at=T0))
    recorder.record(_instance(1, at=T0 + timedelta(minutes=5)))  # duplicate=False, same path
    with session_factory() as session:
        rows = session.scalars(select(Instance)).all()
    assert [(i.path, _utc(i.received_at)) for i in rows] == [("1.2.3/1.2.3.1/1.2.3.1.1.dcm", T0)]  # the first row


def test_begin_record_returns_before_the_commit_and_its_wait_returns_after_it(recorder, session_factory):
    wait = recorder.begin_record(_instance(1))
    wait()
    with session_factory() as session:
        assert [i.sop_instance_uid for i in session.scalars(select(Instance))] == ["1.2.3.1.1"]


def test_a_conflicting_copy_is_a_second_flagged_instance(recorder, session_factory):
    recorder.record(_instance(1))
    recorder.record(_instance(1, conflict=True, path="1.2.3/1.2.3.1/1.2.3.1.1.conflict-00ff.dcm"))
    with session_factory() as session:
        rows = session.execute(select(Instance.sop_instance_uid, Instance.conflict).order_by(Instance.id)).all()
    assert [tuple(r) for r in rows] == [("1.2.3.1.1", False), ("1.2.3.1.1", True)]


def test_an_ended_association_stamps_last_released_at_on_its_studies(recorder, session_factory):
    recorder.record(_instance(1, study="1.2.3", series="1.2.3.1"))
    recorder.record(_instance(1, study="1.2.4", series="1.2.4.1"))
    released = T0 + timedelta(minutes=3)
    recorder.associations_ended({"1.2.3"}, released)
    assert _utc(_study(session_factory, "1.2.3").last_released_at) == released
    assert _study(session_factory, "1.2.4").last_released_at is None


def test_each_sender_opening_a_study_counts_until_its_end_and_never_below_zero(recorder, session_factory):
    recorder.record(_instance(1, opens=True))  # association A
    recorder.record(_instance(2, opens=True))  # association B
    recorder.record(_instance(3))  # A again: already counted
    recorder.record(_instance(2, duplicate=True, opens=True))  # association C re-sends recorded bytes: still a sender
    assert _study(session_factory).open_associations == 3
    recorder.associations_ended(["1.2.3"], T0 + timedelta(seconds=1))
    assert _study(session_factory).open_associations == 2
    for n in range(3):
        recorder.associations_ended(["1.2.3"], T0 + timedelta(seconds=2 + n))
    study = _study(session_factory)
    assert study.open_associations == 0 and _utc(study.last_released_at) == T0 + timedelta(seconds=4)


def test_the_nodes_recorder_forgets_the_senders_a_previous_run_left_open(session_factory):
    with DatabaseRecorder(session_factory) as first:
        first.record(_instance(1, opens=True))
        first.record(_instance(1, study="1.2.4", series="1.2.4.1", opens=True))
    assert _study(session_factory).open_associations == 1  # the node died with both associations open
    second = DatabaseRecorder(session_factory).start_for_node()
    try:
        assert [_study(session_factory, uid).open_associations for uid in ("1.2.3", "1.2.4")] == [0, 0]
        second.record(_instance(2, opens=True))
        assert _study(session_factory).open_associations == 1
    finally:
        second.close()


def test_two_recorders_creating_the_same_studies_and_series_at_once_all_succeed(database_url):
    """Receiving processes and STOW-RS each record through a recorder of their own: none may fail an instance
    because another one created its study or series in the meantime."""
    engines = [create_db_engine(database_url) for _ in range(2)]
    recorders = [DatabaseRecorder(make_session_factory(engine)).start() for engine in engines]
    errors: list[BaseException] = []

    def send(thread: int) -> None:
        for study in range(12):
            for n in range(4):
                instance = _instance(thread * 10 + n, study=f"1.2.{study}", series=f"1.2.{study}.{study % 3 + 1}")
                try:
                    recorders[thread % 2].record(instance)
                except RecorderError as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for recorder in recorders:
        recorder.close()
    with make_session_factory(engines[0])() as session:
        counts = (session.scalar(select(func.count()).select_from(Study)),
                  session.scalar(select(func.count()).select_from(Series)),
                  session.scalar(select(func.count()).select_from(Instance)))
    for engine in engines:
        engine.dispose()
    assert errors == []
    assert counts == (12, 12, 12 * 6 * 4)


def test_concurrent_records_share_one_commit_and_each_returns_after_its_row_exists(session_factory, db_engine):
    """Hold the first transaction until 15 more C-STOREs queue behind it: they all commit together, in one."""
    first_started, release_first = threading.Event(), threading.Event()
    begins = 0

    @event.listens_for(db_engine, "begin")
    def _hold_the_first_transaction(_connection) -> None:
        nonlocal begins
        if threading.current_thread().name != "ingest-recorder":
            return
        begins += 1
        if begins == 1:
            first_started.set()
            release_first.wait(30)

    recorder = DatabaseRecorder(session_factory).start()
    seen_after_return: list[bool] = []

    def store(n: int) -> None:
        recorder.record(_instance(n))
        with session_factory() as session:
            seen_after_return.append(
                session.scalar(select(Instance.id).where(Instance.sop_instance_uid == f"1.2.3.1.{n}")) is not None
            )

    try:
        first = threading.Thread(target=store, args=(0,))
        first.start()
        assert first_started.wait(10)
        others = [threading.Thread(target=store, args=(n,)) for n in range(1, 16)]
        for thread in others:
            thread.start()
        wait_for(lambda: recorder._jobs.qsize() == 15, timeout=10, message="the 15 records never queued")
        release_first.set()
        for thread in [first, *others]:
            thread.join(30)
    finally:
        release_first.set()
        recorder.close()
        event.remove(db_engine, "begin", _hold_the_first_transaction)
    assert seen_after_return == [True] * 16
    assert recorder.commits == 2 and begins == 2


def test_a_database_that_refuses_the_row_fails_that_record_only(recorder, session_factory):
    recorder.record(_instance(1))
    bad = _instance(2, study="1" * 65)  # longer than the column on PostgreSQL; SQLite takes it: test what both refuse
    bad = ReceivedInstance(**{**bad.__dict__, "sop_class_uid": None})  # NOT NULL everywhere
    with pytest.raises(RecorderError, match="cannot record in the database"):
        recorder.record(bad)
    recorder.record(_instance(3))
    with session_factory() as session:
        assert sorted(session.scalars(select(Instance.sop_instance_uid))) == ["1.2.3.1.1", "1.2.3.1.3"]
