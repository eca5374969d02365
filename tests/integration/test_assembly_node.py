"""Study assembly behind the real node: dcmtk and pynetdicom send, the database recorder writes (SQLite and
PostgreSQL), the assembler completes studies and calls the hook once per completion."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta, timezone

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select

from dicom_node.assembly import StudyAssembler
from dicom_node.scp import DicomNode
from service.assembly import build_assembler
from service.config import Settings
from service.db.models import Instance, Study, StudyStatus
from service.db.session import session_scope
from service.ingest import DatabaseRecorder
from tests.conftest import require_tool
from tests.support.dicom_corpus import write_ct_series
from tests.support.polling import wait_for


class HookRecorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, study_uid: str) -> None:
        self.calls.append(study_uid)


@dataclass
class RunningNode:
    settings: Settings
    node: DicomNode
    recorder: DatabaseRecorder
    assembler: StudyAssembler
    hook: HookRecorder
    session_factory: object

    def study(self, uid: str) -> Study | None:
        with session_scope(self.session_factory) as session:
            return session.scalar(select(Study).where(Study.study_uid == uid))

    def wait_complete(self, uid: str, count: int = 1, hook: HookRecorder | None = None) -> Study:
        """The study once it is complete for the ``count``-th time and the assembler's hook has been called for it
        (the hook runs just after the completion is committed)."""
        hook = hook or self.hook

        def completed():
            study = self.study(uid)
            return study if study is not None and study.status == StudyStatus.COMPLETE and \
                study.completion_count == count and hook.calls.count(uid) >= count else None

        return wait_for(completed, timeout=30, interval=0.05, message=f"study {uid} did not complete ({count})")


def _aware(moment):
    """A database timestamp as an aware UTC datetime (SQLite gives them back without a time zone)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _settings(tmp_path, database_url: str, **timings) -> Settings:
    return Settings(home=tmp_path / "home", database_url=database_url, dicom_port=0, **timings)


@pytest.fixture
def running_node(tmp_path, database_url, session_factory) -> Iterator[callable]:
    started: list[RunningNode] = []

    def start(**timings) -> RunningNode:
        settings = _settings(tmp_path, database_url, **timings)
        hook = HookRecorder()
        recorder = DatabaseRecorder(session_factory).start()
        node = DicomNode(settings, recorder)
        assembler = build_assembler(settings, session_factory, hook)
        node.start()
        assembler.start()
        started.append(RunningNode(settings, node, recorder, assembler, hook, session_factory))
        return started[-1]

    yield start
    for running in started:
        running.node.stop()
        running.assembler.stop()
        running.recorder.close()


def _storescu(port: int, paths) -> None:
    result = subprocess.run(
        [require_tool("storescu"), "-aec", "M3EDGE", "-aet", "MODALITY", "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_a_study_sent_by_storescu_completes_after_the_release_grace_and_again_when_reopened(tmp_path, running_node):
    running = running_node(study_idle_seconds=60, study_release_grace_seconds=0.3)
    series = write_ct_series(tmp_path / "first", 3, rows=32, columns=32)
    _storescu(running.node.port, series.paths)
    study = running.wait_complete(series.study_uid)
    assert (study.completion_reason, study.reprocess_requested) == ("released", False)
    assert running.assembler.sweep() == []
    assert running.hook.calls == [series.study_uid]

    late = write_ct_series(tmp_path / "late", 1, rows=32, columns=32, study_uid=series.study_uid, series_number=2)
    _storescu(running.node.port, late.paths)
    study = running.wait_complete(series.study_uid, count=2)
    assert (study.completion_reason, study.reprocess_requested) == ("released", True)
    assert running.hook.calls == [series.study_uid, series.study_uid]


def test_a_study_whose_association_stays_open_completes_when_idle(tmp_path, running_node):
    running = running_node(study_idle_seconds=0.5, study_release_grace_seconds=0.1)
    series = write_ct_series(tmp_path / "open", 2, rows=32, columns=32)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", running.node.port, ae_title="M3EDGE")
    assert assoc.is_established
    try:
        for path in series.paths:
            assert assoc.send_c_store(dcmread(path)).Status == 0x0000
        study = running.wait_complete(series.study_uid)
        assert assoc.is_established  # completed by the idle timer, not by a release
        assert study.completion_reason == "idle"
    finally:
        assoc.release()
    assert running.hook.calls == [series.study_uid]


def _association(port: int):
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="M3EDGE")
    assert assoc.is_established
    return assoc


def test_a_study_sent_over_two_associations_completes_once_after_the_last_release(tmp_path, running_node):
    running = running_node(study_idle_seconds=60, study_release_grace_seconds=0.2)
    series = write_ct_series(tmp_path / "two", 4, rows=32, columns=32)
    first, second = _association(running.node.port), _association(running.node.port)
    try:
        assert second.send_c_store(dcmread(series.paths[0])).Status == 0x0000
        for path in series.paths[1:3]:
            assert first.send_c_store(dcmread(path)).Status == 0x0000
        first.release()
        released = wait_for(lambda: getattr(running.study(series.study_uid), "last_released_at", None), timeout=10,
                            message="the first release was not recorded")
        # A pass of the assembler as it would run well past the 0.2 s grace and before the 60 s idle limit (its
        # clock, not a sleep, says when): B is still sending, so the study stays open.
        past_grace = _aware(released) + timedelta(seconds=5)
        probe = StudyAssembler(running.assembler.ledger, running.assembler.timings, running.hook,
                               clock=lambda: past_grace)
        assert probe.sweep() == []
        study = running.study(series.study_uid)
        assert (study.status, study.open_associations) == (StudyStatus.RECEIVING, 1)  # B is still sending
        assert second.send_c_store(dcmread(series.paths[3])).Status == 0x0000
    finally:
        first.release()
        second.release()
    study = running.wait_complete(series.study_uid)
    assert (study.completion_reason, study.completion_count, study.open_associations) == ("released", 1, 0)
    assert running.hook.calls == [series.study_uid]
    with session_scope(running.session_factory) as session:
        count = session.scalar(select(func.count()).select_from(Instance))
    assert count == 4


def test_a_study_received_while_no_assembler_ran_is_completed_by_the_next_one(
    tmp_path, running_node, database_url, session_factory
):
    first = running_node(study_idle_seconds=60, study_release_grace_seconds=0.2)
    first.assembler.stop()  # the process dies before the grace is over: only the database remembers
    series = write_ct_series(tmp_path / "pending", 2, rows=32, columns=32)
    _storescu(first.node.port, series.paths)
    wait_for(lambda: (s := first.study(series.study_uid)) is not None and s.last_released_at is not None, timeout=30)
    assert first.study(series.study_uid).status == StudyStatus.RECEIVING

    hook = HookRecorder()
    settings = _settings(tmp_path, database_url, study_idle_seconds=60, study_release_grace_seconds=0.2)
    restarted = build_assembler(settings, session_factory, hook)
    restarted.start()
    try:
        study = first.wait_complete(series.study_uid, hook=hook)
    finally:
        restarted.stop()
    assert study.completion_reason == "released"
    assert hook.calls == [series.study_uid] and first.hook.calls == []
