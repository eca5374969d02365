"""``m3edge db upgrade`` and ``m3edge studies list|show`` through the real entry point, on SQLite and PostgreSQL."""

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from service.db.models import Instance, Series, Study, StudyStatus
from service.db.session import session_scope


def run_cli(database_url, *args, home=None):
    env = {"M3EDGE_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}
    if home:
        env["M3EDGE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-c", "from service.cli.main import main; main()", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )


def _add_study(session, uid, *, status=StudyStatus.COMPLETE, series=2, per_series=3, when=None):
    when = when or datetime.now(timezone.utc)
    study = Study(study_uid=uid, status=status, modalities="CT", study_description="CT ABDOMEN",
                  study_date="20260101", calling_ae="ORTHANC", first_received_at=when, last_received_at=when)
    for s in range(series):
        ser = Series(series_uid=f"{uid}.{s + 1}", modality="CT", series_number=s + 1, series_description=f"AX {s}")
        for i in range(per_series):
            ser.instances.append(Instance(
                sop_instance_uid=f"{uid}.{s + 1}.{i + 1}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"{uid}/{uid}.{s + 1}/{uid}.{s + 1}.{i + 1}.dcm",
                size_bytes=1000, digest="0" * 64, conflict=(s == 0 and i == 0 and uid.endswith("9"))))
        study.series.append(ser)
    session.add(study)


def test_db_upgrade_creates_the_sqlite_database_in_home(tmp_path):
    env_result = subprocess.run(
        [sys.executable, "-c", "from service.cli.main import main; main()", "db", "upgrade"],
        capture_output=True, text=True, env={"M3EDGE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}, timeout=60,
    )
    assert env_result.returncode == 0, env_result.stderr
    assert (tmp_path / "home" / "m3edge.db").is_file()


def test_studies_list_json_counts_series_and_instances(database_url, session_factory):
    now = datetime.now(timezone.utc)
    with session_scope(session_factory) as session:
        _add_study(session, "1.2.3.9", series=2, per_series=3, when=now)
        _add_study(session, "1.2.3.4", status=StudyStatus.RECEIVING, series=1, per_series=5, when=now - timedelta(hours=1))
    result = run_cli(database_url, "studies", "list", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["study_uid"] for r in rows] == ["1.2.3.9", "1.2.3.4"]  # most recent first
    assert (rows[0]["series_count"], rows[0]["instance_count"], rows[0]["size_bytes"]) == (2, 6, 6000)
    assert (rows[1]["series_count"], rows[1]["instance_count"], rows[1]["status"]) == (1, 5, "receiving")
    assert rows[0]["description"] == "CT ABDOMEN" and rows[0]["modalities"] == "CT"

    filtered = json.loads(run_cli(database_url, "studies", "list", "--json", "--status", "receiving").stdout)
    assert [r["study_uid"] for r in filtered] == ["1.2.3.4"]

    table = run_cli(database_url, "studies", "list")
    assert "1.2.3.9" in table.stdout and "CT ABDOMEN" in table.stdout


def test_studies_show_lists_series_and_flags_conflicts(database_url, session_factory):
    with session_scope(session_factory) as session:
        _add_study(session, "1.2.3.9", series=2, per_series=3)
    detail = json.loads(run_cli(database_url, "studies", "show", "1.2.3.9", "--json").stdout)
    assert [s["series_uid"] for s in detail["series"]] == ["1.2.3.9.1", "1.2.3.9.2"]
    assert [s["conflict_count"] for s in detail["series"]] == [1, 0]
    assert detail["calling_ae"] == "ORTHANC"
    text = run_cli(database_url, "studies", "show", "1.2.3.9").stdout
    assert "CONFLICTING" in text and "6 instances" in text


def test_studies_show_gives_each_stage_its_start_end_and_duration(database_url, session_factory):
    from service.db.models import PipelineRun, RunStatus, StageRun, StageStatus

    started = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    with session_scope(session_factory) as session:
        _add_study(session, "1.2.3.5", status=StudyStatus.FAILED)
        session.flush()
        study = session.query(Study).filter_by(study_uid="1.2.3.5").one()
        run = PipelineRun(study_id=study.id, run_number=1, trigger="complete", status=RunStatus.FAILED,
                          error="no CT series is one regular volume", error_stage="prepare")
        run.stages.append(StageRun(stage="plan", status=StageStatus.DONE, attempts=1, started_at=started,
                                   finished_at=started + timedelta(seconds=1.25)))
        run.stages.append(StageRun(stage="prepare", status=StageStatus.FAILED, attempts=1,
                                   started_at=started + timedelta(seconds=2), finished_at=started + timedelta(seconds=5),
                                   error="no CT series is one regular volume"))
        for stage in ("expert", "vlm", "report", "deliver"):
            run.stages.append(StageRun(stage=stage, status=StageStatus.NOT_RUN))
        session.add(run)
    text = run_cli(database_url, "studies", "show", "1.2.3.5").stdout
    assert "run 1 (complete): failed, failed in prepare: no CT series is one regular volume" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("    ") and line.split()}
    assert "2026-03-04 05:06:07  2026-03-04 05:06:08" in lines["plan"] and "1.250 s" in lines["plan"]
    assert "2026-03-04 05:06:09  2026-03-04 05:06:12" in lines["prepare"] and "3.000 s" in lines["prepare"]
    assert "not run" in lines["deliver"] and "pending" not in text
    detail = json.loads(run_cli(database_url, "studies", "show", "1.2.3.5", "--json").stdout)
    stages = {s["stage"]: s for s in detail["runs"][0]["stages"]}
    assert stages["plan"]["duration_s"] == 1.25 and stages["plan"]["finished_at"].startswith("2026-03-04T05:06:08")
    assert stages["report"]["status"] == "not_run"


@pytest.mark.parametrize("args", [("studies", "show", "9.9.9"), ("studies", "list", "--status", "bogus")])
def test_studies_errors_are_messages_not_tracebacks(database_url, args):
    result = run_cli(database_url, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("m3edge: error:") and "Traceback" not in result.stderr


def test_studies_list_and_show_print_the_patient_context_audit_it_and_log_none_of_it(database_url, session_factory):
    from sqlalchemy import select

    from service.db.models import AuditEvent

    with session_scope(session_factory) as session:
        _add_study(session, "1.2.3.7", series=1, per_series=1)
        _add_study(session, "1.2.3.8", series=1, per_series=1)  # received before 0009: nothing recorded
        session.flush()
        session.query(Study).filter_by(study_uid="1.2.3.7").update(
            {"patient_name": "Doe^Jane", "patient_id": "PID-77", "accession_number": "ACC-7"})
    listed = run_cli(database_url, "studies", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "1.2.3.7" in line)
    assert "Doe^Jane" in row and "PID-77" in row and "ACC-7" in row
    assert "not recorded" in next(line for line in listed.stdout.splitlines() if "1.2.3.8" in line)
    searched = json.loads(run_cli(database_url, "studies", "list", "--json", "--search", "doe").stdout)
    assert [r["study_uid"] for r in searched] == ["1.2.3.7"] and searched[0]["patient_id"] == "PID-77"
    shown = run_cli(database_url, "studies", "show", "1.2.3.7")
    assert "patient       Doe^Jane   ID PID-77   accession ACC-7" in shown.stdout
    for result in (listed, shown):
        assert "Doe" not in result.stderr and "PID-77" not in result.stderr
    with session_factory() as session:
        events = session.execute(select(AuditEvent.actor, AuditEvent.action, AuditEvent.study_uid, AuditEvent.detail)
                                 .order_by(AuditEvent.id)).all()
    assert [(a, b) for a, b, _, _ in events] == [("cli", "studies.list"), ("cli", "studies.list"), ("cli", "study.read")]
    assert set(events[0][3]["studies"]) == {"1.2.3.7", "1.2.3.8"} and events[1][3]["searched"] is True
    assert events[2][2] == "1.2.3.7" and "Doe" not in str(events)
