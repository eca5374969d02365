"""From PACS to a draft report in PACS, with real peers: Orthanc sends a CT, a chest X-ray and a four-sequence brain MRI
study to m3edge; m3edge runs the demo models (VISTA3D, BraTS, the CXR ensemble, VILA-M3) and stores SR (and SEG, SC)
back into Orthanc, in the original studies.

- embedded: ``m3edge serve`` alone (SQLite, the embedded broker, its worker child process, the API);
- production: PostgreSQL + Redis, ``m3edge scp`` and ``m3edge worker`` as separate processes; the worker is killed
  with SIGKILL during the CT's expert stage and restarted: the study completes and exactly one SR is delivered;
- broker down: Redis is stopped while a study completes and started again: the study is processed.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import select

from service.db.migrate import upgrade_database
from service.db.models import PipelineRun, Report, StageRun, StageStatus, Study, StudyStatus
from service.db.session import create_db_engine, make_session_factory, session_scope
from tests.conftest import require_tool
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.m3edge_processes import M3edgeProcess, RedisServer
from tests.support.orthanc import OrthancServer
from tests.support.pipeline_study import brain_study, ct_study, cxr_study, small_demo_models
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.synthetic_series import write_datasets

pytestmark = pytest.mark.slow

STUDIES = {"ct": ct_study, "cxr": cxr_study, "mri": brain_study}
EXPERT_NAMES = {"ct": "VISTA3D", "mri": "BraTS SegResNet", "cxr": "TorchXRayVision ensemble"}
EXPECTED_OBJECTS = {"ct": {"SR", "SEG", "OT"}, "mri": {"SR", "SEG", "OT"}, "cxr": {"SR"}}


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory) -> Path:
    return small_demo_models(tmp_path_factory.mktemp("models") / "models")


@pytest.fixture
def orthanc(tmp_path):
    require_tool("Orthanc")
    with OrthancServer(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture
def studies(tmp_path, orthanc) -> dict[str, list]:
    """The three studies, uploaded to Orthanc (not yet sent to m3edge)."""
    made = {}
    for kind, make in STUDIES.items():
        datasets = make()
        for path in write_datasets(datasets, tmp_path / "studies" / kind):
            orthanc.upload(path)
        made[kind] = datasets
    return made


def _environment(home: Path, demo_models: Path, orthanc: OrthancServer, **extra: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(demo_models, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3EDGE_")}
    env.update(
        M3EDGE_HOME=str(home), M3EDGE_DICOM_HOST="127.0.0.1", M3EDGE_DICOM_PORT=str(free_port()),
        M3EDGE_API_PORT=str(free_port()), M3EDGE_STUDY_IDLE_SECONDS="2", M3EDGE_STUDY_RELEASE_GRACE_SECONDS="0.3",
        M3EDGE_DESTINATIONS=f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}", M3EDGE_VLM_MAX_NEW_TOKENS="12",
        M3EDGE_PIPELINE_SWEEP_SECONDS="1", M3EDGE_SPOOL_RESERVE_BYTES="0", TCP_NODELAY="1", **extra,
    )
    return env


def _send(orthanc: OrthancServer, env: dict[str, str], datasets: list) -> None:
    orthanc.add_modality("m3edge", "M3EDGE", "127.0.0.1", int(env["M3EDGE_DICOM_PORT"]))
    study_id = orthanc._call("POST", "/tools/lookup", content=str(datasets[0].StudyInstanceUID)).json()[0]["ID"]
    orthanc.store_to_modality("m3edge", [study_id])


def _results(orthanc: OrthancServer, study_uid: str) -> dict[str, list[str]]:
    """Modality -> Orthanc instance ids, for the series m3edge added to the study (SR, SEG, OT)."""
    found = [r for r in orthanc._call("POST", "/tools/lookup", content=study_uid).json() if r["Type"] == "Study"]
    objects: dict[str, list[str]] = {}
    for series in orthanc._call("GET", f"/studies/{found[0]['ID']}/series").json():
        modality = series["MainDicomTags"].get("Modality", "")
        if modality in ("SR", "SEG", "OT"):
            objects.setdefault(modality, []).extend(series["Instances"])
    return objects


def _wait_for_reports(orthanc: OrthancServer, studies: dict[str, list], kinds, timeout: float = 150) -> None:
    def arrived() -> bool:
        return all(set(_results(orthanc, str(studies[k][0].StudyInstanceUID))) >= EXPECTED_OBJECTS[k] for k in kinds)

    wait_for(arrived, timeout=timeout, interval=0.5, message=f"not every draft report of {list(kinds)} reached Orthanc")


def _content_items(item) -> list:
    items = []
    for child in item.get("ContentSequence", []):
        items.append(child)
        items.extend(_content_items(child))
    return items


def _check_draft_sr(sr, seg, kind: str, sent: list, tmp_path: Path) -> None:
    study_uid = str(sent[0].StudyInstanceUID)
    assert sr.StudyInstanceUID == study_uid and sr.Modality == "SR"
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
    evidence = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    sent_uids = {str(d.SOPInstanceUID) for d in sent}
    assert evidence == sent_uids | ({seg.SOPInstanceUID} if seg is not None else set())
    items = _content_items(sr)
    texts = [str(i.TextValue) for i in items if i.ValueType == "TEXT"]
    assert any("AI-generated DRAFT" in t and t.startswith("DEMO") for t in texts), texts[:3]
    numbers = [i for i in items if i.ValueType == "NUM"]
    units = {n.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue for n in numbers}
    algorithms = {str(e.ManufacturerModelName) for e in sr.ContributingEquipmentSequence if "DeviceUID" in e}
    assert algorithms == {EXPERT_NAMES[kind], "VILA-M3 demo"}  # IHE AIR: each algorithm with its Device UID
    if kind == "cxr":
        assert len(numbers) == 18 and units == {"1"}  # one score per TorchXRayVision pathology
    else:
        assert numbers and units == {"mL"}
        referenced = {ref.ReferencedSOPInstanceUID for i in items if i.ValueType == "IMAGE"
                      for ref in i.ReferencedSOPSequence if "ReferencedSegmentNumber" in ref}
        assert referenced == {seg.SOPInstanceUID}
        assert {str(r.ReferencedSOPInstanceUID) for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
            <= sent_uids
    for name, dataset in (("sr", sr), ("seg", seg)):
        if dataset is None:
            continue
        path = tmp_path / f"{kind}-{name}.dcm"
        dataset.save_as(path)
        result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{kind} {name}: {errors}"


def _check_delivered(orthanc: OrthancServer, studies: dict[str, list], tmp_path: Path) -> None:
    for kind, sent in studies.items():
        objects = _results(orthanc, str(sent[0].StudyInstanceUID))
        assert set(objects) == EXPECTED_OBJECTS[kind]
        assert all(len(ids) == 1 for ids in objects.values()), objects  # exactly one of each, never a second SR
        read = {m: pydicom.dcmread(BytesIO(orthanc.instance_file(ids[0]))) for m, ids in objects.items()}
        _check_draft_sr(read["SR"], read.get("SEG"), kind, sent, tmp_path)
        _check_with_dcmtk_and_dicom3tools(read, sorted((tmp_path / "studies" / kind).glob("*.dcm")), tmp_path / kind)


def _check_with_dcmtk_and_dicom3tools(results: dict, sources: list[Path], folder: Path) -> None:
    """dsrdump parses the SR as a draft; dcentvfy finds the source instances and every result consistent."""
    folder.mkdir(exist_ok=True)
    paths = {}
    for modality, dataset in results.items():
        paths[modality] = folder / f"{modality}.dcm"
        dataset.save_as(paths[modality])
    env = {**os.environ, "TCP_NODELAY": "1"}
    dump = subprocess.run([require_tool("dsrdump"), str(paths["SR"])], capture_output=True, text=True, env=env,
                          timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert re.search(r"Completion Flag\s*: PARTIAL", dump.stdout) and re.search(r"Verification Flag\s*: UNVERIFIED",
                                                                             dump.stdout)
    entities = subprocess.run([require_tool("dcentvfy"), *map(str, sources), *map(str, paths.values())],
                              capture_output=True, text=True, env=env, timeout=60)
    output = entities.stdout + entities.stderr
    assert entities.returncode == 0 and not [line for line in output.splitlines() if line.startswith("Error")], output


def _check_database(url: str, studies: dict[str, list]) -> None:
    engine = create_db_engine(url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            for sent in studies.values():
                study = session.scalar(select(Study).where(Study.study_uid == str(sent[0].StudyInstanceUID)))
                assert study.status is StudyStatus.DONE, study.error
                [report] = session.scalars(select(Report).where(Report.study_id == study.id)).all()
                assert report.demo and report.status.value == "draft" and Path(report.objects["sr"]["path"]).is_file()
    finally:
        engine.dispose()


def test_embedded_serve_turns_three_studies_into_draft_reports_in_orthanc(tmp_path, demo_models, orthanc, studies):
    env = _environment(tmp_path / "home", demo_models, orthanc)
    serve = M3edgeProcess("serve", ["serve"], env, tmp_path)
    try:
        serve.start("m3edge serving")
        for datasets in studies.values():
            _send(orthanc, env, datasets)
        _wait_for_reports(orthanc, studies, studies)
        health = httpx.get(f"http://127.0.0.1:{env['M3EDGE_API_PORT']}/healthz", timeout=10)
        assert health.status_code == 200
    finally:
        assert serve.stop() == 0, serve.text()[-3000:]
    _check_delivered(orthanc, studies, tmp_path)
    _check_database(f"sqlite:///{tmp_path / 'home' / 'm3edge.db'}", studies)
    log = serve.text()
    assert "pipeline worker started" in log and "m3edge stopped" in log
    for value in ("Phantom^CT", "M3E-CT", "ACC-CT"):
        assert value not in log  # no patient data in the logs


@pytest.fixture
def production(tmp_path, demo_models, orthanc):
    """PostgreSQL (a database of its own), the test's own Redis, and the environment of scp and worker processes."""
    name = f"m3edge_test_{uuid.uuid4().hex[:12]}"
    url = create_postgres_database(name)
    broker = RedisServer(tmp_path / "redis").start()
    try:
        upgrade_database(url)
        env = _environment(tmp_path / "home", demo_models, orthanc, M3EDGE_DATABASE_URL=url,
                           M3EDGE_BROKER_URL=broker.url)
        yield env, url, broker
    finally:
        broker.stop()
        drop_postgres_database(name)


def _stage(factory, study_uid: str, stage: str) -> StageRun | None:
    with session_scope(factory) as session:
        return session.scalar(
            select(StageRun).join(PipelineRun, PipelineRun.id == StageRun.run_id)
            .join(Study, Study.id == PipelineRun.study_id)
            .where(Study.study_uid == study_uid, StageRun.stage == stage)
        )


@pytest.mark.postgres
def test_scp_and_worker_processes_survive_a_worker_killed_during_the_expert_stage(tmp_path, production, orthanc,
                                                                                    studies):
    env, url, _ = production
    engine = create_db_engine(url)
    factory = make_session_factory(engine)
    scp = M3edgeProcess("scp", ["scp"], env, tmp_path)
    worker = M3edgeProcess("worker", ["worker", "--queues", "cpu,gpu,io", "--name", "gpu0@test"], env, tmp_path)
    ct_uid = str(studies["ct"][0].StudyInstanceUID)
    try:
        scp.start("m3edge scp: AE title")
        worker.start("ready.")
        _send(orthanc, env, studies["ct"])
        running = wait_for(lambda: (s := _stage(factory, ct_uid, "expert")) is not None
                           and s.status is StageStatus.RUNNING, timeout=90, interval=0.02,
                           message="the CT's expert stage never started")
        assert running
        worker.kill9()
        assert _stage(factory, ct_uid, "expert").status is StageStatus.RUNNING  # held by the dead worker
        worker.start("ready.")
        for kind in ("cxr", "mri"):
            _send(orthanc, env, studies[kind])
        _wait_for_reports(orthanc, studies, studies)
        # The expert runs beside the VLM stage's first turn, so the kill stopped both: each ran again, once.
        for stage in ("expert", "vlm"):
            row = _stage(factory, ct_uid, stage)
            assert (row.status, row.attempts) == (StageStatus.DONE, 2), stage
        for stage in ("plan", "prepare", "report", "deliver"):
            assert _stage(factory, ct_uid, stage).attempts == 1, stage
    finally:
        worker.stop()
        scp.stop()
        engine.dispose()
    assert "re-queued" in worker.text()  # the restarted worker took back the stage it held
    _check_delivered(orthanc, studies, tmp_path)
    _check_database(url, studies)


@pytest.mark.postgres
def test_a_study_completed_while_the_broker_is_down_is_processed_when_it_returns(tmp_path, production, orthanc,
                                                                                   studies):
    env, url, broker = production
    engine = create_db_engine(url)
    factory = make_session_factory(engine)
    scp = M3edgeProcess("scp", ["scp"], env, tmp_path)
    worker = M3edgeProcess("worker", ["worker"], {**env, "M3EDGE_WORKER_CPU_THREADS": "1"}, tmp_path)
    cxr_uid = str(studies["cxr"][0].StudyInstanceUID)
    try:
        scp.start("m3edge scp: AE title")
        worker.start("ready.")
        assert "model CPU threads 1" in worker.text()
        broker.stop()
        _send(orthanc, env, studies["cxr"])
        wait_for(lambda: "broker unavailable" in scp.text(), timeout=90, interval=0.1,
                 message="the study-complete hook never found the broker down")
        assert _stage(factory, cxr_uid, "plan").status is StageStatus.PENDING  # nothing could be sent
        broker.start()
        _wait_for_reports(orthanc, studies, ["cxr"], timeout=120)
    finally:
        worker.stop()
        scp.stop()
        engine.dispose()
    _check_delivered(orthanc, {"cxr": studies["cxr"]}, tmp_path)
    _check_database(url, {"cxr": studies["cxr"]})


class AsksForAnotherArgument:
    """TEST DOUBLE around the real demo VILA-M3 (random weights cannot be told to trigger): turn 1 answers with a fixed
    VISTA3D trigger whose argument differs from the route's; every later turn is the real model's."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def generate(self, conversation, config):
        from engines.vlm.base import Generation

        self.calls += 1
        real = self.model.generate(conversation, config)
        if self.calls % 2 == 0:
            return real
        answer = "This looks like a CT image. Let me trigger <VISTA3D(hepatic tumor)>."
        return Generation(answer, real.prompt, real.prompt_tokens, 12, "stop_token", 0.0, 0.0, real.backend, real.model)


def _inline_pipeline(tmp_path, demo_models, wrap_model, max_new_tokens: int):
    """Real stage handlers on an embedded database, the demo VILA-M3 wrapped in a test double ``wrap_model``.

    Returns (settings, engine, session factory, handlers, the double)."""
    from dataclasses import replace

    from service.config import Settings
    from service.pipeline.work import build_stage_handlers
    from service.pipeline.work.vlm_loader import load_vlm

    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(demo_models, target_is_directory=True)
    url = f"sqlite:///{home / 'm3edge.db'}"
    upgrade_database(url)
    settings = Settings(home=home, database_url=url, vlm_max_new_tokens=max_new_tokens)
    engine = create_db_engine(url)
    factory = make_session_factory(engine)
    loaded = load_vlm(settings)
    double = wrap_model(loaded.model)
    handlers = build_stage_handlers(settings, factory, vlm_factory=lambda: replace(loaded, model=double))
    return settings, engine, factory, handlers, double


def test_when_the_model_asks_for_another_argument_that_expert_runs_too(tmp_path, demo_models):
    from tests.support.pipeline_study import run_inline, store_in_spool

    settings, engine, factory, handlers, double = _inline_pipeline(tmp_path, demo_models, AsksForAnotherArgument, 12)
    outcomes = run_inline(settings, factory, store_in_spool(settings, factory, ct_study()), handlers).outcomes
    try:
        # Each stage ran once; the expert's own message found it taken by the VLM stage, which ran it beside turn 1.
        assert sorted(stage for stage, outcome in outcomes if outcome == "done") == sorted(
            ["plan", "prepare", "vlm", "report", "deliver"])
        assert ("expert", "not-claimed") in outcomes
        assert {outcome for _, outcome in outcomes} == {"done", "not-claimed"}
        with session_scope(factory) as session:
            report = session.scalars(select(Report)).one()
            expert_row = session.scalars(select(StageRun).where(StageRun.stage == "expert")).one()
            expert, expert_attempts = expert_row.result, expert_row.attempts
            vlm = session.scalars(select(StageRun).where(StageRun.stage == "vlm")).one().result
        assert expert["argument"] == "everything" and expert_attempts == 1  # the route's expert ran as routed, once
        assert vlm["expert_beside_turn1"] is True
        call = report.transcript["expert_call"]
        assert (call["expert"], call["argument"], call["source"]) == ("VISTA3D", "hepatic tumor", "ran")
        assert report.transcript["outcome"] in ("answered_with_expert", "answer_truncated")
        assert len(report.transcript["turns"]) == 2 and double.calls == 2
        assert report.findings["argument"] == "everything"  # the SR and SEG carry the route's findings
        assert Path(report.objects["overlay_png"]).is_file() and "overlay" in report.objects
    finally:
        engine.dispose()


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


def test_the_worker_child_does_not_outlive_a_killed_serve(tmp_path, demo_models, orthanc):
    env = _environment(tmp_path / "home", demo_models, orthanc)
    serve = M3edgeProcess("serve", ["serve"], env, tmp_path)
    try:
        serve.start("m3edge serving")
        match = wait_for(lambda: re.search(r"pipeline worker started \(pid (\d+)\)", serve.text()), timeout=30)
        child = int(match.group(1))
        assert _running(child)
        serve.kill9()
        wait_for(lambda: not _running(child), timeout=60, interval=0.2,
                 message="the worker child kept running after m3edge serve was killed")
    finally:
        serve.stop()


class SlowFirstTurn:
    """TEST DOUBLE around the real demo VILA-M3: every generation takes at least 1.5 s (as a real 8B turn would take
    seconds), and the wall-clock span of each generation is recorded."""

    def __init__(self, model) -> None:
        self.model, self.spans = model, []

    def generate(self, conversation, config):
        import time

        started = time.time()
        real = self.model.generate(conversation, config)
        time.sleep(max(0.0, 1.5 - (time.time() - started)))  # simulated model time, not a wait for a condition
        self.spans.append((started, time.time()))
        return real


def _epoch(moment) -> float:
    """Seconds since the epoch of a database timestamp (SQLite gives them back without a time zone: UTC)."""
    from datetime import timezone

    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def test_the_route_expert_runs_while_the_model_generates_its_first_turn(tmp_path, demo_models):
    from tests.support.pipeline_study import run_inline, store_in_spool

    settings, engine, factory, handlers, slow = _inline_pipeline(tmp_path, demo_models, SlowFirstTurn, 8)
    try:
        run_inline(settings, factory, store_in_spool(settings, factory, cxr_study()), handlers)
        with session_scope(factory) as session:
            rows = {row.stage: row for row in session.scalars(select(StageRun))}
            report = session.scalars(select(Report)).one()
        expert, vlm = rows["expert"], rows["vlm"]
        assert expert.status is StageStatus.DONE and expert.attempts == 1 and vlm.result["expert_beside_turn1"]
        first_turn_start, first_turn_end = slow.spans[0]
        expert_start, expert_end = _epoch(expert.started_at), _epoch(expert.finished_at)
        # The expert ran inside the first turn's span, not before it and not after it.
        assert first_turn_start - 1.0 <= expert_start <= first_turn_end, (expert_start, slow.spans)
        assert expert_end <= _epoch(vlm.finished_at)
        assert report.findings  # the route expert's findings reached the report
    finally:
        engine.dispose()
