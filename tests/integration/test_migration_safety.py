"""Revision 0007 on a database with history: series UIDs kept per study, the stages of ended runs become not_run,
and what /metrics summed from history becomes the counters' starting values (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from service.db.migrate import upgrade_database
from service.db.session import create_db_engine
from tests.support.databases import create_postgres_database, drop_postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_at_0006(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        upgrade_database(url, "0006")
        yield url
        return
    name = f"m3edge_mig_{uuid.uuid4().hex[:10]}"
    url = create_postgres_database(name)
    try:
        upgrade_database(url, "0006")
        yield url
    finally:
        drop_postgres_database(name)


def _seed(connection) -> None:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    connection.execute(text(
        "INSERT INTO studies (id, study_uid, status, modalities, study_description, study_date, calling_ae, "
        "first_received_at, last_received_at, opened_at, completion_reason, completion_count, reprocess_requested, "
        "error, open_associations) VALUES (1, '1.2.3', 'failed', 'CT', '', '', '', :t, :t, :t, '', 1, false, '', 0)"
    ), {"t": start})
    connection.execute(text(
        "INSERT INTO pipeline_runs (id, study_id, run_number, trigger, status, priority, route, error, error_stage, "
        "created_at) VALUES (1, 1, 1, 'complete', 'failed', 'routine', '{}', 'boom', 'prepare', :t)"), {"t": start})
    rows = [("plan", "done", start, start + timedelta(seconds=2)), ("prepare", "failed", start, start),
            ("expert", "pending", None, None), ("vlm", "queued", None, None)]
    for stage, status, began, ended in rows:
        connection.execute(text(
            "INSERT INTO stage_runs (run_id, stage, status, attempts, started_at, finished_at, worker, error, result) "
            "VALUES (1, :stage, :status, 1, :began, :ended, '', '', '{}')"),
            {"stage": stage, "status": status, "began": began, "ended": ended})
    connection.execute(text(
        "INSERT INTO deliveries (run_id, destination, sop_instance_uid, path, status, attempts, last_error) "
        "VALUES (1, 'PACS@10.0.0.5:104', '1.2.3.4', '/x', 'failed', 3, 'refused')"))


def test_revision_0007_keeps_history_and_turns_it_into_counters(database_at_0006):
    engine = create_db_engine(database_at_0006)
    try:
        with engine.begin() as connection:
            _seed(connection)
        upgrade_database(database_at_0006)
        with engine.connect() as connection:
            stages = dict(connection.execute(text("SELECT stage, status FROM stage_runs")).all())
            counters = {(n, label): v for n, label, v in connection.execute(
                text("SELECT name, label, value FROM metric_counters"))}
    finally:
        engine.dispose()
    assert stages == {"plan": "done", "prepare": "failed", "expert": "not_run", "vlm": "not_run"}
    assert counters[("stages_done", "plan")] == 1 and counters[("stage_seconds", "plan")] == pytest.approx(2.0, abs=0.01)
    assert counters[("runs_failed", "prepare")] == 1
    assert counters[("deliveries_failed", "PACS@10.0.0.5:104")] == 1
