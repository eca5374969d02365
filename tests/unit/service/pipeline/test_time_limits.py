"""Stage time limits under the solo pool, on a real database: the soft limit interrupts the stage (a timed-out attempt,
retried, then failed naming the stage and the limit), the hard limit ends the process, a prefork pool is left alone."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from billiard.exceptions import SoftTimeLimitExceeded

from service.config import ConfigurationError, Settings
from service.db.models import PipelineRun, StageRun, StageStatus, StudyStatus
from service.db.session import session_scope
from service.pipeline.executor import StageExecutor, StageOutcome
from service.pipeline.intake import PipelineIntake
from service.pipeline.ledger import PipelineLedger
from service.pipeline.stages import TIME_LIMITS, PermanentStageError, Stage
from service.pipeline.time_limits import (
    HARD_LIMIT_EXIT_CODE,
    StageTimedOut,
    StageTimeLimit,
    StageTimeLimiter,
    StageTimeLimits,
)
from tests.support.polling import wait_for
from tests.unit.service.pipeline.test_ledger_and_executor import (
    EXPECTED_ORDER,
    RecordingDispatcher,
    SimulatedClock,
    add_study,
    deliver_next,
    drain,
    handlers,
    study_state,
)

ROOT = Path(__file__).resolve().parents[4]
HANG_S = 20.0  # a stage "hangs" this long: the limits under test end it much sooner


def expert_limits(soft_s, hard_s):
    return StageTimeLimits.with_overrides({"expert": {"soft": soft_s, "hard": hard_s}})


@pytest.fixture
def pipeline(session_factory):
    ledger = PipelineLedger(session_factory, max_attempts=3, time_limits=expert_limits(0.2, HANG_S),
                            clock=SimulatedClock())
    dispatcher = RecordingDispatcher(ledger)
    return ledger, dispatcher, PipelineIntake(ledger, dispatcher)


def expert_row(session_factory, run_id):
    with session_scope(session_factory) as session:
        row = session.query(StageRun).filter_by(run_id=run_id, stage="expert").one()
        return row.status, row.attempts, dict(row.result or {}), row.error


def limit_threads():
    return [t for t in threading.enumerate() if t.name.startswith("m3edge-time-limit")]


def test_a_stage_past_its_soft_limit_is_interrupted_retried_then_fails_naming_the_stage_and_limit(session_factory,
                                                                                                   pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    attempts, interrupted = [], []

    def hanging_expert(claim):
        attempts.append(claim.attempt)
        try:
            time.sleep(HANG_S)  # a peer that never answers: the soft limit interrupts the sleep
        except StageTimedOut:
            interrupted.append(claim.attempt)
            raise
        return StageOutcome({"never": "reached"})

    calls = []
    executor = StageExecutor(ledger, handlers(calls, {Stage.EXPERT: hanging_expert}), dispatcher,
                             time_limiter=StageTimeLimiter(ledger.time_limits))
    run_id = intake.on_study_complete("1.2.3")
    drain(executor, dispatcher)
    assert attempts == interrupted == [1, 2, 3]
    status, error = study_state(session_factory)
    assert status is StudyStatus.FAILED
    assert error == ("expert: timed out: ran past the expert stage's soft time limit of 0.2 s "
                     "(gave up after 3 attempts)")
    assert expert_row(session_factory, run_id)[:3] == (StageStatus.FAILED, 3, {})
    with session_scope(session_factory) as session:
        assert session.get(PipelineRun, run_id).error_stage == "expert"
    assert Stage.REPORT not in [c[0] for c in calls]


def test_a_timed_out_attempt_is_retried_with_backoff_and_what_it_returned_is_not_kept(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    swallowed = []

    def expert(claim):
        if claim.attempt == 1:
            try:
                time.sleep(HANG_S)
            except StageTimedOut:  # a stage that swallows the exception and returns what it has so far
                swallowed.append(claim.attempt)
                return StageOutcome({"partial": True})
        return StageOutcome({"complete": True})

    executor = StageExecutor(ledger, handlers([], {Stage.EXPERT: expert}), dispatcher, backoff=lambda n: 4.0 * n,
                             time_limiter=StageTimeLimiter(ledger.time_limits))
    run_id = intake.on_study_complete("1.2.3")
    seen = []
    while dispatcher.sent:
        message, _ = deliver_next(executor, dispatcher)
        seen.append((message.stage, message.countdown))
    assert swallowed == [1]
    assert (Stage.EXPERT, 4.0) in seen  # the retry waited its back-off
    assert study_state(session_factory)[0] is StudyStatus.DONE
    assert expert_row(session_factory, run_id)[:3] == (StageStatus.DONE, 2, {"complete": True})


def test_a_timeout_the_stage_turns_into_another_error_is_still_a_timeout(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    converted = []

    def expert(claim):
        if claim.attempt == 1:
            try:
                time.sleep(HANG_S)
            except StageTimedOut as exc:
                converted.append(claim.attempt)
                raise PermanentStageError("the model call failed") from exc
        return StageOutcome({"complete": True})

    executor = StageExecutor(ledger, handlers([], {Stage.EXPERT: expert}), dispatcher,
                             time_limiter=StageTimeLimiter(ledger.time_limits))
    run_id = intake.on_study_complete("1.2.3")
    executor.execute(*dispatcher.sent.pop(0)[:2])  # plan
    executor.execute(*dispatcher.sent.pop(0)[:2])  # prepare
    assert executor.execute(run_id, Stage.EXPERT) == "retrying"  # not "failed": the timeout is transient
    assert converted == [1]
    status, attempts, _, error = expert_row(session_factory, run_id)
    assert (status, attempts) == (StageStatus.QUEUED, 1)
    assert error == "timed out: ran past the expert stage's soft time limit of 0.2 s"
    drain(executor, dispatcher)
    assert study_state(session_factory)[0] is StudyStatus.DONE


def test_quick_stages_run_untouched_and_the_alarm_handler_is_given_back(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    before = signal.getsignal(signal.SIGALRM)
    calls = []
    limits = StageTimeLimits.with_overrides({s.value: {"soft": HANG_S} for s in Stage})
    executor = StageExecutor(ledger, handlers(calls), dispatcher, time_limiter=StageTimeLimiter(limits))
    intake.on_study_complete("1.2.3")
    drain(executor, dispatcher)
    assert [c[0] for c in calls] == EXPECTED_ORDER
    assert study_state(session_factory) == (StudyStatus.DONE, "")
    assert signal.getsignal(signal.SIGALRM) is before
    wait_for(lambda: not limit_threads(), timeout=10, message="a time-limit watch outlived its stage")


def test_a_stage_past_its_hard_limit_ends_the_process_after_noting_it(session_factory):
    ledger = PipelineLedger(session_factory, max_attempts=3, time_limits=expert_limits(0.1, 0.4))
    dispatcher = RecordingDispatcher(ledger)
    intake = PipelineIntake(ledger, dispatcher)
    add_study(session_factory)
    exits = []
    exited = threading.Event()

    def exit_process(code):  # what os._exit would do, recorded: the test process goes on
        exits.append((code, ledger.stage_state(run_id, Stage.EXPERT)))
        exited.set()

    def stuck_expert(claim):
        # C code that never looks at signals: SIGALRM stays pending until the stage "returns".
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            exited.wait(HANG_S)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return StageOutcome({"late": True})

    limiter = StageTimeLimiter(ledger.time_limits, on_hard_limit=ledger.note_error, exit_process=exit_process)
    executor = StageExecutor(ledger, handlers([], {Stage.EXPERT: stuck_expert}), dispatcher, time_limiter=limiter)
    run_id = intake.on_study_complete("1.2.3")
    executor.execute(*dispatcher.sent.pop(0)[:2])  # plan
    executor.execute(*dispatcher.sent.pop(0)[:2])  # prepare
    assert executor.execute(run_id, Stage.EXPERT) == "retrying"  # (only because this exit_process returned)
    assert len(exits) == 1
    code, (status, result, error) = exits[0]
    assert code == HARD_LIMIT_EXIT_CODE == 75
    assert (status, result) == (StageStatus.RUNNING, {})  # noted while still running, before the process ends
    assert error == ("timed out: ran past the expert stage's hard time limit of 0.4 s; its worker process was ended "
                     "(exit status 75)")
    assert expert_row(session_factory, run_id)[2] == {}  # the late return was not taken as done


def test_a_stage_that_keeps_hitting_the_hard_limit_fails_with_that_error(session_factory):
    ledger = PipelineLedger(session_factory, max_attempts=2, time_limits=expert_limits(1, 2))
    intake = PipelineIntake(ledger, RecordingDispatcher(ledger))
    add_study(session_factory)
    run_id = intake.on_study_complete("1.2.3")
    for stage in (Stage.PLAN, Stage.PREPARE):
        assert ledger.claim(run_id, stage, "gpu0") is not None
        ledger.finish(run_id, stage, {})
    for _ in range(2):  # each time the watchdog notes it, ends the worker, and the restarted worker takes it back
        assert ledger.claim(run_id, Stage.EXPERT, "gpu0") is not None
        ledger.note_error(run_id, Stage.EXPERT, "timed out: ran past the expert stage's hard time limit of 2 s")
        assert [t.stage for t in ledger.recover_worker("gpu0")] == [Stage.EXPERT]
    assert ledger.claim(run_id, Stage.EXPERT, "gpu0") is None
    assert study_state(session_factory) == (
        StudyStatus.FAILED,
        "expert: gave up after 2 attempts; last error: timed out: ran past the expert stage's hard time limit of 2 s")


def test_outside_the_main_thread_an_outcome_past_the_soft_limit_is_still_not_taken(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)

    def slow_expert(claim):
        time.sleep(0.6)  # no signal reaches a thread other than the main one: it returns, past its soft limit
        return StageOutcome({"late": True})

    executor = StageExecutor(ledger, handlers([], {Stage.EXPERT: slow_expert}), dispatcher,
                             time_limiter=StageTimeLimiter(ledger.time_limits))
    run_id = intake.on_study_complete("1.2.3")
    executor.execute(*dispatcher.sent.pop(0)[:2])
    executor.execute(*dispatcher.sent.pop(0)[:2])
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(executor.execute(run_id, Stage.EXPERT)))
    thread.start()
    thread.join(30)
    assert outcome == ["retrying"]
    assert expert_row(session_factory, run_id)[2] == {}


def test_a_pool_that_enforces_limits_itself_is_left_alone_and_its_timeout_recorded_alike(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    limiter = StageTimeLimiter.for_pool(ledger.time_limits, "prefork")
    assert not limiter.enforce and StageTimeLimiter.for_pool(ledger.time_limits, "solo").enforce

    def expert(claim):
        if claim.attempt == 1:
            raise SoftTimeLimitExceeded()  # what the prefork pool raises in its child
        time.sleep(0.5)  # past the 0.2 s soft limit: the pool would act, not us
        return StageOutcome({"complete": True})

    executor = StageExecutor(ledger, handlers([], {Stage.EXPERT: expert}), dispatcher, time_limiter=limiter)
    run_id = intake.on_study_complete("1.2.3")
    executor.execute(*dispatcher.sent.pop(0)[:2])
    executor.execute(*dispatcher.sent.pop(0)[:2])
    assert executor.execute(run_id, Stage.EXPERT) == "retrying"
    assert expert_row(session_factory, run_id)[3] == "timed out: ran past the expert stage's soft time limit of 0.2 s"
    drain(executor, dispatcher)
    assert expert_row(session_factory, run_id)[:3] == (StageStatus.DONE, 2, {"complete": True})


def test_limits_default_from_the_stage_table_and_settings_change_them():
    defaults = StageTimeLimits.defaults()
    assert {stage: limit.hard_s for stage, limit in defaults.items()} == TIME_LIMITS
    assert defaults[Stage.EXPERT] == StageTimeLimit(TIME_LIMITS[Stage.EXPERT] - 30, TIME_LIMITS[Stage.EXPERT])
    settings = Settings(stage_time_limits={"expert": {"hard": 3600}, "plan": {"soft": 5, "hard": 8}})
    limits = StageTimeLimits.from_settings(settings)
    assert limits[Stage.EXPERT] == StageTimeLimit(3570, 3600)
    assert limits[Stage.PLAN] == StageTimeLimit(5, 8)
    assert limits[Stage.VLM] == defaults[Stage.VLM]
    assert limits.longest_hard_s == 3600


def test_the_composition_refuses_unknown_stages_and_a_soft_limit_above_the_hard_one(monkeypatch):
    from service.composition import stage_time_limits

    monkeypatch.setenv("M3EDGE_STAGE_TIME_LIMITS", '{"exprt": {"hard": 60}}')
    with pytest.raises(ConfigurationError, match="STAGE_TIME_LIMITS: unknown stage.*exprt.*choose from plan"):
        stage_time_limits(Settings.load())
    monkeypatch.setenv("M3EDGE_STAGE_TIME_LIMITS", '{"plan": {"soft": 200}}')
    with pytest.raises(ConfigurationError, match=r"stage plan: .*soft time limit \(200 s\).*hard limit \(120 s\)"):
        stage_time_limits(Settings.load())
    monkeypatch.delenv("M3EDGE_STAGE_TIME_LIMITS")
    monkeypatch.setenv("M3EDGE_STAGE_TIME_LIMITS__VLM__HARD", "2400")
    assert stage_time_limits(Settings.load())[Stage.VLM] == StageTimeLimit(2370, 2400)


LATE_ALARM_SCRIPT = """
import signal, time
from service.pipeline.time_limits import StageTimedOut, StageTimeLimiter, StageTimeLimits
signal.signal(signal.SIGALRM, signal.SIG_DFL)  # a worker's: SIGALRM would end the process
limiter = StageTimeLimiter(StageTimeLimits.with_overrides({"plan": {"soft": 0.1, "hard": 30}}))
try:
    with limiter.limit("plan", 1):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # the watch's alarm stays pending past the stage
        time.sleep(0.5)
except StageTimedOut:
    print("timed out")
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
print("still running")
"""


def test_an_alarm_still_pending_when_the_stage_ends_never_reaches_the_handler_given_back():
    result = subprocess.run([sys.executable, "-c", LATE_ALARM_SCRIPT], capture_output=True, text=True, timeout=60,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (result.returncode, result.stdout.split()) == (0, ["timed", "out", "still", "running"]), result.stderr


def test_the_process_ends_even_when_noting_the_hard_limit_hangs():
    stuck, exited = threading.Event(), threading.Event()
    exits, raised = [], []

    def exit_process(code):
        exits.append(code)
        exited.set()

    limiter = StageTimeLimiter(expert_limits(0.05, 0.1), on_hard_limit=lambda *note: stuck.wait(HANG_S),
                               exit_process=exit_process, note_timeout_s=0.2)

    def stage():  # outside the main thread: no alarm interrupts it, only the hard limit's watchdog acts
        try:
            with limiter.limit(Stage.EXPERT, 1):
                exited.wait(HANG_S)
        except StageTimedOut as exc:
            raised.append(exc)

    thread = threading.Thread(target=stage)
    thread.start()
    thread.join(HANG_S + 5)
    stuck.set()  # (a database lock the stuck stage held, released only now)
    assert exits == [HARD_LIMIT_EXIT_CODE]
    assert [str(e) for e in raised] == ["timed out: ran past the expert stage's soft time limit of 0.05 s"]
