"""The pipeline over a real broker and a real worker process: embedded (SQLite + file broker) and PostgreSQL + Redis.

A worker is killed with SIGKILL in the middle of the expert stage; restarted, it finishes the study and every
later stage runs exactly once.
"""

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from service.config import Settings
from service.db.migrate import upgrade_database
from service.db.models import Study, StudyStatus
from service.db.session import create_db_engine, make_session_factory, session_scope
from service.pipeline.celery_app import CeleryDispatcher, create_celery
from service.pipeline.intake import PipelineIntake
from service.pipeline.ledger import PipelineLedger
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.polling import wait_for

REDIS_URL = "redis://127.0.0.1:6379/7"
ROOT = Path(__file__).resolve().parents[3]


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
    ledger = PipelineLedger(factory)
    intake = PipelineIntake(ledger, CeleryDispatcher(create_celery(settings), ledger))

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
