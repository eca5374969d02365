"""``/metrics`` read from the database: a scrape costs the same however much history there is, and the backlog
counts only the stages of live runs."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import generate_latest
from sqlalchemy.orm import Session, sessionmaker

from service.api.metrics import make_registry
from service.db.counters import STAGE_SECONDS, STAGES_DONE, add_to_counter
from service.db.models import PipelineRun, RunStatus, StageRun, StageStatus, Study, StudyStatus, utcnow
from service.db.session import session_scope

STAGES = ("plan", "prepare", "expert", "vlm", "report", "deliver")


class RowCountingSession(Session):
    """A session that counts the rows every statement hands back (what a scrape transfers from the database)."""

    rows_read = 0

    def execute(self, *args, **kwargs):
        frozen = super().execute(*args, **kwargs).freeze()
        RowCountingSession.rows_read += len(frozen.data)
        return frozen()


def _history(session_factory, start: int, count: int, *, run_status=RunStatus.DONE, waiting: int = 0) -> None:
    """``count`` studies with one run each, ``waiting`` of whose stages (from the end) never ran."""
    now = utcnow()
    with session_scope(session_factory) as session:
        for n in range(start, start + count):
            study = Study(study_uid=f"1.2.826.0.1.{n}", status=StudyStatus.DONE, modalities="CT")
            session.add(study)
            session.flush()
            run = PipelineRun(study_id=study.id, run_number=1, trigger="complete", status=run_status)
            for index, stage in enumerate(STAGES):
                waits = index >= len(STAGES) - waiting
                run.stages.append(StageRun(
                    stage=stage, status=StageStatus.PENDING if waits else StageStatus.DONE,
                    started_at=None if waits else now - timedelta(seconds=10),
                    finished_at=None if waits else now - timedelta(seconds=9)))
            session.add(run)


def _scrape(engine) -> tuple[int, str]:
    RowCountingSession.rows_read = 0
    text = generate_latest(make_registry(sessionmaker(bind=engine, class_=RowCountingSession))).decode()
    return RowCountingSession.rows_read, text


def test_a_scrape_reads_as_many_rows_after_hundreds_of_runs_as_after_ten(db_engine, session_factory):
    _history(session_factory, 0, 10)
    before, _ = _scrape(db_engine)
    _history(session_factory, 10, 300)
    after, text = _scrape(db_engine)
    assert after == before, f"a scrape read {before} rows with 10 runs and {after} with 310"
    assert "m3edge_stage_backlog" in text


def test_the_backlog_counts_only_stages_of_live_runs_and_durations_come_from_counters(db_engine, session_factory):
    _history(session_factory, 0, 3, run_status=RunStatus.FAILED, waiting=4)  # ended runs left pending (old rows)
    _history(session_factory, 100, 2, run_status=RunStatus.RUNNING, waiting=4)
    with session_scope(session_factory) as session:
        add_to_counter(session, STAGES_DONE, "plan", 4)
        add_to_counter(session, STAGE_SECONDS, "plan", 2.5)
        add_to_counter(session, STAGES_DONE, "plan")
        add_to_counter(session, STAGE_SECONDS, "plan", 0.5)
    _, text = _scrape(db_engine)
    assert 'm3edge_stage_backlog{stage="expert",state="pending"} 2.0' in text
    assert 'm3edge_stage_backlog{stage="deliver",state="pending"} 2.0' in text
    assert 'm3edge_stage_duration_seconds_count{stage="plan"} 5.0' in text
    assert 'm3edge_stage_duration_seconds_sum{stage="plan"} 3.0' in text
