"""The pipeline's state machine on a real database: idempotent stages, retries, failures, reprocess, the sweeper."""

from datetime import timedelta
from typing import NamedTuple

import pytest

from service.db.models import MetricCounter, PipelineRun, StageRun, StageStatus, Study, StudyStatus, utcnow
from service.db.session import session_scope
from service.pipeline.executor import StageExecutor, StageOutcome
from service.pipeline.intake import PipelineIntake, PipelineSweeper
from service.pipeline.ledger import PipelineLedger, StageClaimLost, StageNotDue
from service.pipeline.stages import PermanentStageError, Stage, StudySkipped, TransientStageError


class SimulatedClock:
    """The ledger's clock in these tests: it moves only when a test (or ``drain``) moves it, so a back-off passes
    without waiting for it."""

    def __init__(self):
        self.now = utcnow()

    def __call__(self):
        return self.now

    def advance_to(self, moment):
        self.now = max(self.now, moment)


class Sent(NamedTuple):
    run_id: int
    stage: Stage
    countdown: float
    due: object  # when the broker hands it to a worker: sent + countdown, on the ledger's clock


class RecordingDispatcher:
    """Test double for the Celery dispatcher: records tickets with when they are due; can refuse like a broker that
    is down."""

    def __init__(self, ledger):
        self.ledger = ledger
        self.sent = []
        self.deliveries = []
        self.broker_up = True

    def dispatch(self, ticket, countdown=0):
        if not self.broker_up:
            return False
        self.sent.append(Sent(ticket.run_id, ticket.stage, countdown,
                              self.ledger.clock() + timedelta(seconds=countdown or 0)))
        self.ledger.mark_queued(ticket)
        return True

    def deliver(self, run_id):
        self.deliveries.append(run_id)
        return True


def handlers(calls, overrides=None):
    def make(stage):
        def handle(claim):
            calls.append((stage, claim.attempt, dict(claim.results)))
            if stage is Stage.PLAN:
                return StageOutcome({"rule": "ct"}, route={"expert": "VISTA3D"}, priority="routine")
            return StageOutcome({"stage": stage.value})
        return handle
    table = {stage: make(stage) for stage in Stage}
    table.update(overrides or {})
    return table


EXPECTED_ORDER = [Stage.PLAN, Stage.PREPARE, Stage.VLM, Stage.EXPERT, Stage.REPORT, Stage.DELIVER]


def deliver_next(executor, dispatcher):
    """Hand the first message due to the executor, as the broker and a worker would (the clock moves to when it is
    due); returns (the message, what the executor did)."""
    message = min(dispatcher.sent, key=lambda sent: sent.due)  # the first sent among those due first
    dispatcher.sent.remove(message)
    dispatcher.ledger.clock.advance_to(message.due)
    return message, executor.execute(message.run_id, message.stage)


def drain(executor, dispatcher):
    """Run every sent message when it is due, as a worker would; returns what each did."""
    done = []
    while dispatcher.sent:
        message, outcome = deliver_next(executor, dispatcher)
        done.append((message.stage, outcome))
    return done


@pytest.fixture
def pipeline(session_factory):
    ledger = PipelineLedger(session_factory, max_attempts=3, clock=SimulatedClock())
    dispatcher = RecordingDispatcher(ledger)
    return ledger, dispatcher, PipelineIntake(ledger, dispatcher)


def add_study(session_factory, uid="1.2.3", status=StudyStatus.COMPLETE):
    with session_scope(session_factory) as session:
        session.add(Study(study_uid=uid, status=status))


def study_state(session_factory, uid="1.2.3"):
    with session_scope(session_factory) as session:
        study = session.query(Study).filter_by(study_uid=uid).one()
        return study.status, study.error


def test_a_completed_study_runs_every_stage_once_in_order(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    calls = []
    executor = StageExecutor(ledger, handlers(calls), dispatcher)
    run_id = intake.on_study_complete("1.2.3")
    assert run_id is not None
    assert intake.on_study_complete("1.2.3") is None  # the hook and the sweeper may both call it: one run
    drain(executor, dispatcher)
    # The VLM stage is sent before the expert (it may run the expert beside the model's first turn); the report
    # waits for both.
    assert [c[0] for c in calls] == EXPECTED_ORDER
    assert calls[-1][2]["plan"]["rule"] == "ct"  # later stages see earlier results
    assert set(calls[4][2]) == {"plan", "prepare", "vlm", "expert"}
    assert study_state(session_factory) == (StudyStatus.DONE, "")
    with session_scope(session_factory) as session:
        run = session.get(PipelineRun, run_id)
        assert run.route == {"expert": "VISTA3D"}
        assert all(s.status == StageStatus.DONE and s.attempts == 1 for s in run.stages)


def test_a_redelivered_message_for_a_done_stage_does_not_run_it_again(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    calls = []
    executor = StageExecutor(ledger, handlers(calls), dispatcher)
    run_id = intake.on_study_complete("1.2.3")
    drain(executor, dispatcher)
    assert executor.execute(run_id, Stage.EXPERT) == "not-claimed"
    assert [c[0] for c in calls].count(Stage.EXPERT) == 1


def test_transient_errors_retry_with_backoff_then_give_up(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    calls = []

    def flaky(claim):
        calls.append(("deliver", claim.attempt))
        raise TransientStageError("PACS@127.0.0.1:104 refused the association")

    executor = StageExecutor(ledger, handlers([], {Stage.DELIVER: flaky}), dispatcher, backoff=lambda n: 10 * n)
    intake.on_study_complete("1.2.3")
    drain(executor, dispatcher)
    assert [a for _, a in calls] == [1, 2, 3]
    status, error = study_state(session_factory)
    assert status is StudyStatus.FAILED
    assert "deliver: PACS@127.0.0.1:104 refused" in error and "gave up after 3 attempts" in error


def test_retry_messages_carry_the_backoff(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    attempts = []

    def once_then_ok(claim):
        attempts.append(claim.attempt)
        if claim.attempt == 1:
            raise TransientStageError("busy")
        return StageOutcome({"ok": True})

    executor = StageExecutor(ledger, handlers([], {Stage.EXPERT: once_then_ok}), dispatcher, backoff=lambda n: 7.5)
    intake.on_study_complete("1.2.3")
    seen = []
    while dispatcher.sent:
        message, _ = deliver_next(executor, dispatcher)
        seen.append((message.stage, message.countdown))
    assert (Stage.EXPERT, 7.5) in seen
    assert attempts == [1, 2]
    assert study_state(session_factory)[0] is StudyStatus.DONE


def test_permanent_error_fails_the_study_and_reprocess_resumes_from_the_failed_stage(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    calls = []
    broken = {"on": True}

    def report(claim):
        calls.append(("report", claim.results.get("expert")))
        if broken["on"]:
            raise PermanentStageError("the SEG writer refused the label volume")
        return StageOutcome({"sr": "x"})

    executor = StageExecutor(ledger, handlers(calls, {Stage.REPORT: report}), dispatcher)
    intake.on_study_complete("1.2.3")
    drain(executor, dispatcher)
    assert study_state(session_factory) == (StudyStatus.FAILED, "report: the SEG writer refused the label volume")
    with session_scope(session_factory) as session:  # counted as it happened, for /metrics
        counters = {(c.name, c.label): c.value for c in session.query(MetricCounter)}
    assert {label for name, label in counters if name == "stages_done"} == {"plan", "prepare", "expert", "vlm"}
    assert counters[("runs_failed", "report")] == 1 and counters[("stages_done", "plan")] == 1
    assert all(counters[("stage_seconds", s)] >= 0 for s in ("plan", "prepare", "expert", "vlm"))

    broken["on"] = False
    calls.clear()
    second = intake.reprocess("1.2.3")
    drain(executor, dispatcher)
    assert [c[0] for c in calls] == ["report", Stage.DELIVER]  # plan..vlm carried over, not run again
    assert calls[0][1] == {"stage": "expert"}
    assert study_state(session_factory)[0] is StudyStatus.DONE
    with session_scope(session_factory) as session:
        assert session.get(PipelineRun, second).run_number == 2

    calls.clear()
    intake.reprocess("1.2.3", from_stage="plan")
    drain(executor, dispatcher)
    assert [c[0] for c in calls] == EXPECTED_ORDER


def test_unexpected_exceptions_fail_visibly(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)

    def boom(claim):
        raise KeyError("spacing")

    executor = StageExecutor(ledger, handlers([], {Stage.PREPARE: boom}), dispatcher)
    intake.on_study_complete("1.2.3")
    drain(executor, dispatcher)
    assert study_state(session_factory) == (StudyStatus.FAILED, "prepare: KeyError: 'spacing'")


def test_a_study_no_rule_matches_ends_skipped(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)

    def plan(claim):
        raise StudySkipped("no routing rule matched: ct: no series passes any_series")

    calls = []
    executor = StageExecutor(ledger, handlers(calls, {Stage.PLAN: plan}), dispatcher)
    intake.on_study_complete("1.2.3")
    drain(executor, dispatcher)
    assert calls == []
    assert study_state(session_factory) == (StudyStatus.SKIPPED, "no routing rule matched: ct: no series passes any_series")


def test_broker_down_at_completion_loses_nothing(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    dispatcher.broker_up = False
    run_id = intake.on_study_complete("1.2.3")
    assert dispatcher.sent == []
    sweeper = PipelineSweeper(intake)
    assert sweeper.sweep_once() == 0  # still down
    dispatcher.broker_up = True
    assert sweeper.sweep_once() == 1
    assert dispatcher.sent[0][:2] == (run_id, Stage.PLAN)
    drain(StageExecutor(ledger, handlers([]), dispatcher), dispatcher)
    assert study_state(session_factory)[0] is StudyStatus.DONE


def test_sweeper_takes_a_completed_study_whose_hook_never_ran(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory, "1.2.4")
    PipelineSweeper(intake).sweep_once()
    assert [m.stage for m in dispatcher.sent] == [Stage.PLAN]
    assert study_state(session_factory, "1.2.4")[0] is StudyStatus.QUEUED


def test_sweeper_requeues_a_stage_whose_worker_was_lost(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    calls = []
    executor = StageExecutor(ledger, handlers(calls), dispatcher)
    run_id = intake.on_study_complete("1.2.3")
    # plan and prepare run, then a worker claims the expert stage and dies (kill -9): the row stays RUNNING.
    executor.execute(*dispatcher.sent.pop(0)[:2])
    executor.execute(*dispatcher.sent.pop(0)[:2])
    assert [m.stage for m in dispatcher.sent] == [Stage.VLM, Stage.EXPERT]
    dispatcher.sent.clear()
    assert ledger.claim(run_id, Stage.EXPERT, "lost-worker") is not None
    assert ledger.stalled() == []  # within its time limit: left alone
    with session_scope(session_factory) as session:
        row = session.query(StageRun).filter_by(run_id=run_id, stage="expert").one()
        row.started_at = utcnow() - timedelta(hours=2)
    tickets = ledger.stalled()
    assert [(t.run_id, t.stage) for t in tickets] == [(run_id, Stage.EXPERT)]
    for ticket in tickets:
        dispatcher.dispatch(ticket)
    drain(executor, dispatcher)
    assert study_state(session_factory)[0] is StudyStatus.DONE
    with session_scope(session_factory) as session:
        assert session.query(StageRun).filter_by(run_id=run_id, stage="expert").one().attempts == 2


def test_a_message_lost_by_the_broker_is_sent_again(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    run_id = intake.on_study_complete("1.2.3")
    dispatcher.sent.clear()  # the broker lost it
    assert ledger.stalled() == []
    later = utcnow() + timedelta(minutes=5)
    assert [(t.run_id, t.stage) for t in ledger.stalled(now=later)] == [(run_id, Stage.PLAN)]


def test_executor_needs_a_handler_for_every_stage(session_factory, pipeline):
    ledger, dispatcher, _ = pipeline
    with pytest.raises(ValueError, match="no handler for stages deliver"):
        StageExecutor(ledger, {s: (lambda c: StageOutcome()) for s in Stage if s is not Stage.DELIVER}, dispatcher)


# -- back-off ----------------------------------------------------------------------------------------------------------


def test_a_duplicate_message_for_a_stage_in_backoff_runs_it_only_once_its_backoff_has_passed(session_factory,
                                                                                               pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    clock = ledger.clock
    expert_runs = []  # (attempt, the ledger's time when it started)

    def expert(claim):
        expert_runs.append((claim.attempt, clock()))
        if claim.attempt == 1:
            raise TransientStageError("CUDA out of memory")
        return StageOutcome({"labels": "ok"})

    calls = []
    executor = StageExecutor(ledger, handlers(calls, {Stage.EXPERT: expert}), dispatcher, backoff=lambda n: 60.0)
    run_id = intake.on_study_complete("1.2.3")
    for expected in (Stage.PLAN, Stage.PREPARE, Stage.VLM):
        assert deliver_next(executor, dispatcher) == ((run_id, expected, 0, clock()), "done")
    # The VLM stage finished first: the expert is the next stage not done, so its group went out again.
    assert [(m.stage, m.countdown) for m in dispatcher.sent] == [
        (Stage.EXPERT, 0), (Stage.VLM, 0), (Stage.EXPERT, 0)]
    assert deliver_next(executor, dispatcher)[1] == "retrying"
    failed_at = clock()
    assert deliver_next(executor, dispatcher)[1] == "not-claimed"  # the VLM stage is done
    # The duplicate expert message arrives during the back-off: not run, sent again for when the back-off ends.
    assert deliver_next(executor, dispatcher)[1] == "deferred"
    assert [a for a, _ in expert_runs] == [1]
    assert [(m.stage, m.countdown, m.due) for m in dispatcher.sent] == [
        (Stage.EXPERT, 60.0, failed_at + timedelta(seconds=60)),  # the retry's own message
        (Stage.EXPERT, 60.0, failed_at + timedelta(seconds=60)),  # the duplicate, sent again
    ]
    with pytest.raises(StageNotDue, match="stage expert of run .* waits for its retry") as refused:
        ledger.claim(run_id, Stage.EXPERT, "another-worker")  # a message delivered early by any route
    assert refused.value.wait_s == 60.0
    outcomes = drain(executor, dispatcher)
    assert [attempt for attempt, _ in expert_runs] == [1, 2]
    assert expert_runs[1][1] - failed_at == timedelta(seconds=60)  # the retry ran when its back-off ended
    assert [outcome for stage, outcome in outcomes if stage is Stage.EXPERT] == ["done", "not-claimed"]
    assert [c[0] for c in calls] == [Stage.PLAN, Stage.PREPARE, Stage.VLM, Stage.REPORT, Stage.DELIVER]
    assert study_state(session_factory)[0] is StudyStatus.DONE


def test_the_sweeper_leaves_a_stage_in_backoff_alone_until_its_retry_is_due(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    clock = ledger.clock
    run_id = intake.on_study_complete("1.2.3")
    executor = StageExecutor(ledger, handlers([]), dispatcher)
    deliver_next(executor, dispatcher)  # plan
    deliver_next(executor, dispatcher)  # prepare
    dispatcher.sent.clear()
    claim = ledger.claim(run_id, Stage.EXPERT, "gpu0")
    ledger.retry_later(run_id, Stage.EXPERT, "busy", 300.0, attempt=claim.attempt)
    retry_at = clock() + timedelta(seconds=300)
    # The broker was down when the retry was to be sent: the stage is pending, and not due before its back-off ends.
    assert ledger.stalled(now=retry_at - timedelta(seconds=1)) == []
    assert [(t.run_id, t.stage) for t in ledger.stalled(now=retry_at)] == [(run_id, Stage.EXPERT)]
    # The retry's message was sent (queued), then lost: re-sent once the back-off and the queue grace have passed,
    # not after the grace alone.
    dispatcher.dispatch(ledger.stalled(now=retry_at)[0], countdown=300.0)
    assert ledger.stage_state(run_id, Stage.EXPERT)[0] is StageStatus.QUEUED
    assert ledger.stalled(now=clock() + timedelta(minutes=4)) == []
    assert ledger.stalled(now=retry_at + timedelta(minutes=1)) == []
    assert [(t.run_id, t.stage) for t in ledger.stalled(now=retry_at + timedelta(minutes=3))] == [
        (run_id, Stage.EXPERT)]


def test_a_claim_given_back_can_no_longer_record_anything_and_the_stage_runs_again(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory)
    run_id = intake.on_study_complete("1.2.3")
    executor = StageExecutor(ledger, handlers([]), dispatcher)
    deliver_next(executor, dispatcher)
    deliver_next(executor, dispatcher)
    dispatcher.sent.clear()
    held = ledger.claim(run_id, Stage.EXPERT, "gpu0")  # a thread of the VLM stage runs it
    assert ledger.release(run_id, Stage.EXPERT, held.attempt, "given back: the vlm stage ended") is True
    assert ledger.stage_state(run_id, Stage.EXPERT) == (StageStatus.PENDING, {}, "given back: the vlm stage ended")
    assert ledger.release(run_id, Stage.EXPERT, held.attempt, "again") is False
    ledger.note_error(run_id, Stage.EXPERT, "late note", attempt=held.attempt)  # not running under it: ignored
    assert executor.execute(run_id, Stage.EXPERT) == "done"  # its own message runs it, as attempt 2
    for late in (lambda: ledger.finish(run_id, Stage.EXPERT, {"late": True}, attempt=held.attempt),
                 lambda: ledger.retry_later(run_id, Stage.EXPERT, "late", attempt=held.attempt),
                 lambda: ledger.fail(run_id, Stage.EXPERT, "late", attempt=held.attempt)):
        with pytest.raises(StageClaimLost, match="claim 1 of stage expert in run .* no longer holds"):
            late()
    assert ledger.stage_state(run_id, Stage.EXPERT) == (StageStatus.DONE, {"stage": "expert"}, "")
    assert ledger.release(run_id, Stage.EXPERT, 2, "too late") is False
    with session_scope(session_factory) as session:
        assert session.query(StageRun).filter_by(run_id=run_id, stage="expert").one().attempts == 2


def _stage_states(session_factory, run_id):
    with session_scope(session_factory) as session:
        return {s.stage: s.status for s in session.get(PipelineRun, run_id).stages}


def test_the_stages_of_a_run_that_ended_are_not_run_not_pending(session_factory, pipeline):
    ledger, dispatcher, intake = pipeline
    add_study(session_factory, "1.2.3")
    add_study(session_factory, "1.2.4")

    def prepare(claim):
        raise PermanentStageError("no CT series is one regular volume")

    def plan(claim):
        if claim.study_uid == "1.2.4":
            raise StudySkipped("no routing rule matched")
        return StageOutcome({"rule": "ct"}, route={"expert": "VISTA3D"}, priority="routine")

    executor = StageExecutor(ledger, handlers([], {Stage.PLAN: plan, Stage.PREPARE: prepare}), dispatcher)
    failed, skipped = intake.on_study_complete("1.2.3"), intake.on_study_complete("1.2.4")
    drain(executor, dispatcher)
    assert _stage_states(session_factory, failed) == {
        "plan": StageStatus.DONE, "prepare": StageStatus.FAILED, **{s: StageStatus.NOT_RUN for s in
                                                                  ("expert", "vlm", "report", "deliver")}}
    assert _stage_states(session_factory, skipped) == {
        "plan": StageStatus.DONE, **{s.value: StageStatus.NOT_RUN for s in EXPECTED_ORDER[1:]}}
    assert ledger.stalled(ledger.clock() + timedelta(days=1)) == []  # nothing for the sweeper to push
    assert ledger.stage_counts().get(("expert", "pending")) is None

