"""Study assembly with a fake clock over the real database (SQLite and PostgreSQL): every way a study completes,
re-opening, a restart, and the race between completion and a late arrival."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from dicom_node.assembly import AssemblyTimings, CompletionReason, OpenStudy, StudyAssembler, completion_due
from service.assembly import DatabaseStudyLedger
from service.db.models import Study, StudyStatus
from service.db.session import session_scope

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
TIMINGS = AssemblyTimings(idle_seconds=30, release_grace_seconds=5, max_open_seconds=600)


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class HookRecorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, study_uid: str) -> None:
        self.calls.append(study_uid)


def _arrive(session_factory, uid: str, at: datetime) -> None:
    """What the recorder does per stored instance (contract of service.ingest): create or touch the study."""
    with session_scope(session_factory) as session:
        study = session.scalar(select(Study).where(Study.study_uid == uid))
        if study is None:
            session.add(Study(study_uid=uid, first_received_at=at, opened_at=at, last_received_at=at))
        elif study.status != StudyStatus.RECEIVING:
            study.status, study.opened_at, study.reprocess_requested, study.last_received_at = (
                StudyStatus.RECEIVING, at, True, at)
        else:
            study.last_received_at = at


def _release(session_factory, uid: str, at: datetime) -> None:
    with session_scope(session_factory) as session:
        session.execute(update(Study).where(Study.study_uid == uid).values(last_released_at=at))


def _study(session_factory, uid: str) -> Study:
    with session_scope(session_factory) as session:
        return session.scalar(select(Study).where(Study.study_uid == uid))


def _assembler(session_factory, clock, hook=None, timings=TIMINGS) -> StudyAssembler:
    return StudyAssembler(DatabaseStudyLedger(session_factory), timings, hook or HookRecorder(), clock=clock)


def test_a_study_completes_when_nothing_arrived_for_the_idle_time(session_factory):
    clock, hook = FakeClock(), HookRecorder()
    assembler = _assembler(session_factory, clock, hook)
    _arrive(session_factory, "1.2.3", T0)
    clock.advance(20)
    _arrive(session_factory, "1.2.3", clock.now)  # a later instance restarts the idle timer
    clock.advance(29)
    assert assembler.sweep() == [] and hook.calls == []
    clock.advance(1)
    assert assembler.sweep() == ["1.2.3"]
    study = _study(session_factory, "1.2.3")
    assert (study.status, study.completion_reason, study.completion_count) == (StudyStatus.COMPLETE, "idle", 1)
    assert study.completed_at.replace(tzinfo=timezone.utc) == clock.now
    assert hook.calls == ["1.2.3"]
    assert assembler.sweep() == [] and hook.calls == ["1.2.3"]  # completed once


def test_a_released_association_completes_its_study_after_the_grace(session_factory):
    clock, hook = FakeClock(), HookRecorder()
    assembler = _assembler(session_factory, clock, hook)
    _arrive(session_factory, "1.2.4", T0)
    _arrive(session_factory, "1.2.5", T0)
    clock.advance(2)
    _release(session_factory, "1.2.4", clock.now)
    clock.advance(4.9)
    assert assembler.sweep() == []
    clock.advance(0.1)
    assert assembler.sweep() == ["1.2.4"]
    assert _study(session_factory, "1.2.4").completion_reason == "released"
    assert _study(session_factory, "1.2.5").status == StudyStatus.RECEIVING
    assert hook.calls == ["1.2.4"]


def test_a_release_followed_by_another_arrival_does_not_count(session_factory):
    clock = FakeClock()
    assembler = _assembler(session_factory, clock)
    _arrive(session_factory, "1.2.6", T0)
    _release(session_factory, "1.2.6", T0 + timedelta(seconds=1))
    _arrive(session_factory, "1.2.6", T0 + timedelta(seconds=2))  # a second association is still sending
    clock.advance(10)
    assert assembler.sweep() == []
    clock.advance(22)
    assert assembler.sweep() == ["1.2.6"]
    assert _study(session_factory, "1.2.6").completion_reason == "idle"


def _senders(session_factory, uid: str, count: int) -> None:
    with session_scope(session_factory) as session:
        session.execute(update(Study).where(Study.study_uid == uid).values(open_associations=count))


def test_a_release_while_another_sender_is_open_waits_for_the_last_one(session_factory):
    clock, hook = FakeClock(), HookRecorder()
    assembler = _assembler(session_factory, clock, hook)
    _arrive(session_factory, "1.2.7", T0)
    _senders(session_factory, "1.2.7", 1)  # A has ended (its release below), B still has the study open
    _release(session_factory, "1.2.7", T0 + timedelta(seconds=1))
    clock.advance(20)
    assert assembler.sweep() == [] and hook.calls == []
    _senders(session_factory, "1.2.7", 0)
    _release(session_factory, "1.2.7", clock.now)  # B ends
    clock.advance(5)
    assert assembler.sweep() == ["1.2.7"]
    assert _study(session_factory, "1.2.7").completion_reason == "released"


def test_an_open_sender_never_holds_a_study_past_its_idle_time_or_the_cap():
    stuck = OpenStudy("1.2.8", opened_at=T0, last_received_at=T0, last_released_at=T0, open_associations=3)
    assert completion_due(stuck, TIMINGS, T0 + timedelta(seconds=29)) is None
    assert completion_due(stuck, TIMINGS, T0 + timedelta(seconds=30)) is CompletionReason.IDLE
    alone = OpenStudy("1.2.8", opened_at=T0, last_received_at=T0, last_released_at=T0, open_associations=0)
    assert completion_due(alone, TIMINGS, T0 + timedelta(seconds=5)) is CompletionReason.RELEASED


def test_a_study_that_keeps_trickling_in_is_completed_at_the_cap(session_factory):
    clock, hook = FakeClock(), HookRecorder()
    assembler = _assembler(session_factory, clock, hook)
    _arrive(session_factory, "1.2.7", T0)
    for _ in range(59):
        clock.advance(10)
        _arrive(session_factory, "1.2.7", clock.now)
        assert assembler.sweep() == []
    clock.advance(10)  # 600 s after it opened
    _arrive(session_factory, "1.2.7", clock.now)
    assert assembler.sweep() == ["1.2.7"]
    assert _study(session_factory, "1.2.7").completion_reason == "max_open"
    assert hook.calls == ["1.2.7"]


def test_an_instance_after_completion_reopens_the_study_and_it_completes_again(session_factory):
    clock, hook = FakeClock(), HookRecorder()
    assembler = _assembler(session_factory, clock, hook)
    _arrive(session_factory, "1.2.8", T0)
    clock.advance(30)
    assert assembler.sweep() == ["1.2.8"]
    clock.advance(100)
    _arrive(session_factory, "1.2.8", clock.now)  # the recorder re-opens it and asks for reprocessing
    reopened = _study(session_factory, "1.2.8")
    assert (reopened.status, reopened.reprocess_requested) == (StudyStatus.RECEIVING, True)
    clock.advance(29)
    assert assembler.sweep() == []
    clock.advance(1)
    assert assembler.sweep() == ["1.2.8"]
    study = _study(session_factory, "1.2.8")
    assert (study.status, study.completion_count, study.reprocess_requested) == (StudyStatus.COMPLETE, 2, True)
    assert hook.calls == ["1.2.8", "1.2.8"]


def test_the_cap_counts_from_the_reopening_not_the_first_instance(session_factory):
    clock = FakeClock()
    assembler = _assembler(session_factory, clock)
    _arrive(session_factory, "1.2.9", T0)
    clock.advance(30)
    assert assembler.sweep() == ["1.2.9"]
    clock.advance(1000)  # well past first_received_at + cap
    _arrive(session_factory, "1.2.9", clock.now)
    clock.advance(1)
    assert assembler.sweep() == []


def test_a_new_assembler_over_the_same_database_resumes_the_timers(session_factory):
    clock = FakeClock()
    first = _assembler(session_factory, clock)
    _arrive(session_factory, "1.3.1", T0)
    _arrive(session_factory, "1.3.2", T0 + timedelta(seconds=10))
    _release(session_factory, "1.3.2", T0 + timedelta(seconds=11))
    clock.advance(5)
    assert first.sweep() == []
    del first  # the process stops; nothing is kept but the database

    clock.advance(5)
    hook = HookRecorder()
    second = _assembler(session_factory, clock, hook)
    assert second.sweep() == []  # 10 s after the first arrival: nothing is due yet
    clock.advance(6)  # T0+16: the release of 1.3.2 at T0+11 plus 5 s of grace
    assert second.sweep() == ["1.3.2"]
    clock.advance(13.9)
    assert second.sweep() == []
    clock.advance(0.1)  # T0+30: 1.3.1's idle time
    assert second.sweep() == ["1.3.1"]
    assert hook.calls == ["1.3.2", "1.3.1"]


def test_an_assembler_that_was_down_completes_with_the_deadline_that_passed_first(session_factory):
    clock = FakeClock(T0 + timedelta(hours=2))
    _arrive(session_factory, "1.3.3", T0)
    _release(session_factory, "1.3.3", T0 + timedelta(seconds=1))
    assert _assembler(session_factory, clock).sweep() == ["1.3.3"]
    assert _study(session_factory, "1.3.3").completion_reason == "released"


class ArrivalDuringCompletion(DatabaseStudyLedger):
    """The real ledger, with an instance arriving between the assembler's read and its conditional update."""

    def __init__(self, session_factory, arrival_at: datetime) -> None:
        super().__init__(session_factory)
        self.arrival_at = arrival_at

    def complete(self, study: OpenStudy, reason: CompletionReason, completed_at: datetime) -> bool:
        _arrive(self.session_factory, study.study_uid, self.arrival_at)
        return super().complete(study, reason, completed_at)


def test_an_arrival_between_the_read_and_the_update_keeps_the_study_open(session_factory):
    clock, hook = FakeClock(), HookRecorder()
    _arrive(session_factory, "1.3.4", T0)
    clock.advance(31)
    ledger = ArrivalDuringCompletion(session_factory, clock.now)
    assembler = StudyAssembler(ledger, TIMINGS, hook, clock=clock)
    assert assembler.sweep() == []
    study = _study(session_factory, "1.3.4")
    assert (study.status, study.completion_count) == (StudyStatus.RECEIVING, 0)
    assert hook.calls == []
    clock.advance(30)
    assert _assembler(session_factory, clock, hook).sweep() == ["1.3.4"]


def test_two_assemblers_sweeping_at_once_complete_each_study_exactly_once(session_factory):
    import threading

    clock = FakeClock()
    uids = [f"1.5.{n}" for n in range(20)]
    for uid in uids:
        _arrive(session_factory, uid, T0)
    clock.advance(31)
    hooks = [HookRecorder(), HookRecorder()]
    assemblers = [_assembler(session_factory, clock, hook) for hook in hooks]
    barrier = threading.Barrier(2)
    results: list[list[str]] = [[], []]

    def sweep(index: int) -> None:
        barrier.wait()
        results[index] = assemblers[index].sweep()

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results[0] + results[1]) == sorted(uids)
    assert sorted(hooks[0].calls + hooks[1].calls) == sorted(uids)
    assert {_study(session_factory, uid).completion_count for uid in uids} == {1}


def test_a_failing_hook_is_logged_and_the_study_stays_complete(session_factory, caplog):
    clock = FakeClock()
    calls = []

    def failing_hook(study_uid: str) -> None:
        calls.append(study_uid)
        raise RuntimeError("pipeline is down")

    assembler = _assembler(session_factory, clock, failing_hook)
    _arrive(session_factory, "1.3.5", T0)
    _arrive(session_factory, "1.3.6", T0)
    clock.advance(30)
    assert sorted(assembler.sweep()) == ["1.3.5", "1.3.6"]  # the first failure did not stop the pass
    assert sorted(calls) == ["1.3.5", "1.3.6"]
    assert _study(session_factory, "1.3.5").status == StudyStatus.COMPLETE
    assert "study-complete hook failed for study 1.3.5" in caplog.text


def test_the_thread_completes_a_study_and_stops(session_factory):
    from tests.support.polling import wait_for

    hook = HookRecorder()
    timings = AssemblyTimings(idle_seconds=0.2, release_grace_seconds=0.1, max_open_seconds=60)
    assembler = StudyAssembler(DatabaseStudyLedger(session_factory), timings, hook)
    _arrive(session_factory, "1.3.7", datetime.now(timezone.utc))
    assembler.start()
    try:
        wait_for(lambda: hook.calls == ["1.3.7"], timeout=10, message="the assembler thread never completed 1.3.7")
    finally:
        assembler.stop()
    assert not assembler.running
    assert _study(session_factory, "1.3.7").status == StudyStatus.COMPLETE


class LedgerThatFailsFirst(DatabaseStudyLedger):
    def __init__(self, session_factory, failures: int) -> None:
        super().__init__(session_factory)
        self.failures = failures

    def open_studies(self):
        if self.failures:
            self.failures -= 1
            raise OSError("database unreachable")
        return super().open_studies()


def test_the_thread_survives_a_failing_database_and_completes_the_study_later(session_factory, caplog):
    from tests.support.polling import wait_for

    caplog.set_level(logging.INFO, logger="dicom_node.assembly")
    hook = HookRecorder()
    timings = AssemblyTimings(idle_seconds=0.1, release_grace_seconds=0.1, max_open_seconds=60)
    ledger = LedgerThatFailsFirst(session_factory, failures=2)
    assembler = StudyAssembler(ledger, timings, hook)
    _arrive(session_factory, "1.3.8", datetime.now(timezone.utc))
    assembler.start()
    try:
        wait_for(lambda: hook.calls == ["1.3.8"], timeout=10, message="the assembler never recovered")
    finally:
        assembler.stop()
    assert ledger.failures == 0
    assert "study assembly pass failed; retrying with back-off" in caplog.text
    assert "works again after 2 failed pass(es)" in caplog.text


@pytest.mark.parametrize(
    ("timings", "match"),
    [
        (dict(idle_seconds=0), "idle_seconds must be positive"),
        (dict(release_grace_seconds=-1), "release_grace_seconds cannot be negative"),
        (dict(max_open_seconds=0), "max_open_seconds must be positive"),
    ],
)
def test_timings_refuse_impossible_values(timings, match):
    with pytest.raises(ValueError, match=match):
        AssemblyTimings(**timings)


def test_naive_timestamps_from_sqlite_are_read_as_utc():
    study = OpenStudy("1.4", opened_at=T0.replace(tzinfo=None), last_received_at=T0.replace(tzinfo=None))
    assert completion_due(study, TIMINGS, T0 + timedelta(seconds=29)) is None
    assert completion_due(study, TIMINGS, T0 + timedelta(seconds=30)) is CompletionReason.IDLE


def test_the_poll_interval_follows_the_shortest_timer():
    assert AssemblyTimings(idle_seconds=30, release_grace_seconds=5).poll_interval == 1.0
    assert AssemblyTimings(idle_seconds=0.4, release_grace_seconds=1).poll_interval == pytest.approx(0.1)
    assert AssemblyTimings(idle_seconds=2, release_grace_seconds=0.2).poll_interval == pytest.approx(0.05)
