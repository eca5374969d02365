"""The pipeline's state machine on a real database: idempotent stages, retries, failures, reprocess, the sweeper."""

from datetime import timedelta

import pytest

from service.db.models import PipelineRun, StageRun, StageStatus, Study, StudyStatus, utcnow
from service.db.session import session_scope
from service.pipeline.executor import StageExecutor, StageOutcome
from service.pipeline.intake import PipelineIntake, PipelineSweeper
from service.pipeline.ledger import PipelineLedger
from service.pipeline.stages import PermanentStageError, Stage, StudySkipped, TransientStageError


class RecordingDispatcher:
    """Test double for the Celery dispatcher: records tickets; can refuse like a broker that is down."""

    def __init__(self, ledger):
        self.ledger = ledger
        self.sent = []
        self.deliveries = []
        self.broker_up = True

    def dispatch(self, ticket, countdown=0):
        if not self.broker_up:
            return False
        self.sent.append((ticket.run_id, ticket.stage, countdown))
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


def drain(executor, dispatcher):
    """Run every sent message in order, as a worker would."""
    while dispatcher.sent:
        run_id, stage, _ = dispatcher.sent.pop(0)
        executor.execute(run_id, stage)


@pytest.fixture
def pipeline(session_factory):
    ledger = PipelineLedger(session_factory, max_attempts=3)
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
        run_id, stage, countdown = dispatcher.sent.pop(0)
        seen.append((stage, countdown))
        executor.execute(run_id, stage)
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
    assert [s for _, s, _ in dispatcher.sent] == [Stage.PLAN]
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
    assert [s for _, s, _ in dispatcher.sent] == [Stage.VLM, Stage.EXPERT]
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
