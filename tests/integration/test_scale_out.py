"""Scale-out: two worker processes (two hosts, in production) on one PostgreSQL database and one Redis broker.

Eight studies go in; both workers do part of the work, every stage of every run is done exactly once (on its first
attempt, by the worker the database records), and every study ends ``done``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from service.config import Settings
from service.db.migrate import upgrade_database
from service.db.models import PipelineRun, StageRun, Study, StudyStatus
from service.db.session import create_db_engine, make_session_factory, session_scope
from service.composition import build_pipeline
from service.pipeline.stages import STAGE_ORDER
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.polling import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REDIS_URL = "redis://127.0.0.1:6379/9"
ROOT = Path(__file__).resolve().parents[2]
STUDIES = 8
WORKERS = ("m3edge-cpu+gpu+io@host-a", "m3edge-cpu+gpu+io@host-b")


@pytest.fixture
def shared_backends(tmp_path):
    """A throw-away PostgreSQL database and an empty Redis database, as two hosts would share them."""
    name = f"m3edge_scale_{uuid.uuid4().hex[:12]}"
    url = create_postgres_database(name)
    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()
    try:
        upgrade_database(url)
        yield url
    finally:
        broker.flushdb()
        drop_postgres_database(name)


def start_worker(name: str, queues: str, url: str, home: Path, markers: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3EDGE_")}
    env.update(M3EDGE_HOME=str(home), M3EDGE_DATABASE_URL=url, M3EDGE_BROKER_URL=REDIS_URL)
    log = open(markers.parent / f"{name.split('@')[1]}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "tests.support.scale_out_worker", str(markers), name, queues],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)


def test_two_workers_split_the_studies_and_run_every_stage_once(shared_backends, tmp_path):
    url = shared_backends
    markers = tmp_path / "markers"
    markers.mkdir()
    factory = make_session_factory(create_db_engine(url))
    uids = [f"1.2.826.0.1.3680043.8.498.{900 + index}" for index in range(STUDIES)]
    with session_scope(factory) as session:
        session.add_all(Study(study_uid=uid, status=StudyStatus.COMPLETE) for uid in uids)
    settings = Settings(home=tmp_path / "sender", database_url=url, broker_url=REDIS_URL)
    intake = build_pipeline(settings, factory).intake
    run_ids = [intake.on_study_complete(uid) for uid in uids]
    assert None not in run_ids

    # Each "host" has its own HOME (spool, models); only the database and the broker are shared.
    workers = [start_worker(name, "cpu,gpu,io", url, tmp_path / name.split("@")[1], markers) for name in WORKERS]
    try:
        def all_finished():
            with session_scope(factory) as session:
                statuses = session.execute(select(Study.status)).scalars().all()
                return all(s in (StudyStatus.DONE, StudyStatus.FAILED) for s in statuses)

        wait_for(all_finished, timeout=90, interval=0.2, message="the studies did not all finish on two workers")
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)

    with session_scope(factory) as session:
        assert set(session.execute(select(Study.status)).scalars()) == {StudyStatus.DONE}
        recorded = {
            (run_id, stage): (attempts, worker)
            for run_id, stage, attempts, worker in session.execute(
                select(StageRun.run_id, StageRun.stage, StageRun.attempts, StageRun.worker).join(PipelineRun)
            )
        }
    written = Counter()
    by_worker: dict[str, set[int]] = {name: set() for name in WORKERS}
    for marker in markers.iterdir():
        if marker.name.startswith("started-"):
            continue
        run_id, stage, attempt = marker.name.rsplit("-", 2)
        written[(int(run_id), stage)] += 1
        worker = marker.read_text()
        assert attempt == "1", f"{marker.name}: run again"
        assert recorded[(int(run_id), stage)] == (1, worker), marker.name  # the database agrees with the marker
        by_worker[worker].add(int(run_id))

    expected = {(run_id, stage.value) for run_id in run_ids for stage in STAGE_ORDER}
    assert set(written) == expected, "every stage of every run ran"
    assert set(written.values()) == {1}, [key for key, count in written.items() if count > 1]
    assert all(by_worker.values()), f"one worker did nothing: { {k: sorted(v) for k, v in by_worker.items()} }"
    assert set().union(*by_worker.values()) == set(run_ids)
