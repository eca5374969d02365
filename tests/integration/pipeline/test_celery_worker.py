"""The pipeline over a real broker and a real worker process: embedded (SQLite + file broker) and PostgreSQL + Redis.

A worker is killed with SIGKILL in the middle of the expert stage; restarted, it finishes the study and every
later stage runs exactly once. A worker whose expert stage hangs is ended by the stage's hard time limit, restarted by
its supervisor, and the stage's next attempt is interrupted by its soft limit.
"""

import os
import signal
import subprocess
import sys
import uuid
from datetime import timezone
from pathlib import Path

import pytest
import redis

from service.worker_process import WorkerProcess
from service.config import Settings
from service.db.migrate import upgrade_database
from service.db.models import StageRun, StageStatus, Study, StudyStatus
from service.db.session import create_db_engine, make_session_factory, session_scope
from service.composition import build_pipeline
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.polling import wait_for

REDIS_URL = "redis://127.0.0.1:6379/7"
ROOT = Path(__file__).resolve().parents[3]


def _utc(moment):
    """A database timestamp as an aware UTC datetime (SQLite gives them back without a time zone)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def start_worker(env, markers):
    return subprocess.Popen([sys.executable, "-m", "tests.support.pipeline_worker", str(markers)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(markers / "worker.log", "ab"))


@pytest.fixture(params=["embedded", pytest.param("postgres-redis", marks=pytest.mark.postgres)])
def deployment(request, tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3EDGE_")}
    env["M3EDGE_HOME"] = str(home)
    database = None
    if request.param == "embedded":
        url = f"sqlite:///{home / 'm3edge.db'}"
    else:
        database = f"m3edge_test_{uuid.uuid4().hex[:12]}"
        url = create_postgres_database(database)
        redis.Redis.from_url(REDIS_URL).flushdb()
        env["M3EDGE_BROKER_URL"] = REDIS_URL
    upgrade_database(url)
    env["M3EDGE_DATABASE_URL"] = url
    yield Settings(home=home, database_url=url, broker_url=env.get("M3EDGE_BROKER_URL")), env
    if database:
        drop_postgres_database(database)


@pytest.mark.slow
def test_worker_killed_during_expert_stage_resumes_and_runs_each_later_stage_once(deployment, tmp_path):
    settings, env = deployment
    markers = tmp_path / "markers"
    markers.mkdir()
    factory = make_session_factory(create_db_engine(settings.effective_database_url))
    with session_scope(factory) as session:
        session.add(Study(study_uid="1.2.826.0.1.3680043.8.498.1", status=StudyStatus.COMPLETE))
    intake = build_pipeline(settings, factory).intake

    worker = start_worker(env, markers)
    try:
        run_id = intake.on_study_complete("1.2.826.0.1.3680043.8.498.1")
        wait_for(lambda: (markers / f"{run_id}-expert-1").exists(), timeout=60, message="expert stage never started")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        (markers / "release").write_text("go")
        worker = start_worker(env, markers)

        def finished():
            with session_scope(factory) as session:
                return session.query(Study).one().status in (StudyStatus.DONE, StudyStatus.FAILED)

        wait_for(finished, timeout=90, message="study did not finish after the worker restarted")
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    with session_scope(factory) as session:
        assert session.query(Study).one().status is StudyStatus.DONE
    names = sorted(p.name for p in markers.iterdir() if p.name.startswith(f"{run_id}-"))
    assert f"{run_id}-expert-2" in names  # run again after the kill
    for stage in ("plan", "prepare", "vlm", "report", "deliver"):
        assert [n for n in names if n.startswith(f"{run_id}-{stage}-")] == [f"{run_id}-{stage}-1"], names


@pytest.mark.slow
def test_a_hung_stage_is_interrupted_at_its_soft_limit_and_ends_its_worker_at_the_hard_one(deployment, tmp_path,
                                                                                          caplog):
    """Under the solo pool: a stage stuck where no signal reaches it ends the worker (exit status 75) at the hard
    limit, its supervisor (``m3edge serve``'s) restarts it, the restarted worker takes the stage back; the next attempt
    hangs in a sleep, which the soft limit interrupts; the third attempt finishes the study."""
    settings, env = deployment
    env["M3EDGE_STAGE_TIME_LIMITS"] = '{"expert": {"soft": 1, "hard": 3}}'
    markers = tmp_path / "markers"
    markers.mkdir()
    factory = make_session_factory(create_db_engine(settings.effective_database_url))
    with session_scope(factory) as session:
        session.add(Study(study_uid="1.2.826.0.1.3680043.8.498.2", status=StudyStatus.COMPLETE))
    intake = build_pipeline(settings, factory).intake
    supervisor = WorkerProcess(restart_delay_s=0.5, env=env,
                               command=[sys.executable, "-m", "tests.support.hanging_stage_worker", str(markers)])
    supervisor.start()
    try:
        run_id = intake.on_study_complete("1.2.826.0.1.3680043.8.498.2")

        def finished():
            with session_scope(factory) as session:
                return session.query(Study).one().status in (StudyStatus.DONE, StudyStatus.FAILED)

        wait_for(finished, timeout=120, message="the study did not finish after its expert stage hung")
    finally:
        supervisor.stop(timeout=20)
    with session_scope(factory) as session:
        assert session.query(Study).one().status is StudyStatus.DONE
        expert = session.query(StageRun).filter_by(run_id=run_id, stage="expert").one()
        assert (expert.status, expert.attempts, expert.result) == (StageStatus.DONE, 3, {"stage": "expert",
                                                                                         "attempt": 3})
        # The third attempt waited for the back-off the second one's timeout set, whatever message came first (the
        # VLM stage, done before the expert, had sent the expert's message again).
        assert expert.retry_at is not None and _utc(expert.started_at) >= _utc(expert.retry_at)
    assert supervisor.restarts == 1
    assert [r.getMessage() for r in caplog.records if "exited with status 75 (a stage ran past its hard time limit)"
            in r.getMessage()], "the worker did not end with the hard limit's exit status"
    # What the ledger showed each attempt when it started: the watchdog's note, then the soft limit's error.
    assert (markers / f"{run_id}-expert-1").read_text() == ""
    assert (markers / f"{run_id}-expert-2").read_text() == (
        "timed out: ran past the expert stage's hard time limit of 3 s; its worker process was ended (exit status 75) "
        "(worker test-worker@localhost)")
    assert (markers / f"{run_id}-expert-2-interrupted").exists()
    soft_error = "timed out: ran past the expert stage's soft time limit of 1 s"
    assert (markers / f"{run_id}-expert-3").read_text() == soft_error
    names = sorted(p.name for p in markers.iterdir() if p.name.startswith(f"{run_id}-"))
    for stage in ("plan", "prepare", "vlm", "report", "deliver"):
        assert [n for n in names if n.startswith(f"{run_id}-{stage}-")] == [f"{run_id}-{stage}-1"], names
