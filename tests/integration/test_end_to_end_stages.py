"""The real stage handlers on the paths that end early, run by the real executor in this process (no models needed):
a study no rule takes is ``skipped`` with the rules' reason; a brain MRI whose sequences are not co-registered is
``skipped`` by ``prepare``; a CT series that is not one regular volume fails the run in ``prepare`` with the reason,
and ``m3edge studies reprocess`` starts a new run from that stage, reusing the plan."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from pydicom.uid import generate_uid
from sqlalchemy import select

from service.config import Settings
from service.db.models import PipelineRun, StageStatus, Study, StudyStatus
from service.db.session import session_scope
from service.pipeline.ledger import PipelineLedger
from service.pipeline.work import build_stage_handlers
from tests.support.pipeline_study import brain_study, cxr_study, run_inline, store_in_spool
from tests.support.synthetic_series import axial_geometry, ct_series, cxr_dataset


def _run(settings: Settings, session_factory, study_uid: str):
    return run_inline(settings, session_factory, study_uid)


def _study(session_factory, uid: str) -> Study:
    with session_scope(session_factory) as session:
        return session.scalar(select(Study).where(Study.study_uid == uid))


def test_a_study_no_rule_takes_is_skipped_with_the_rules_reason(tmp_path, database_url, session_factory):
    settings = Settings(home=tmp_path, database_url=database_url)
    lateral = cxr_dataset(np.full((64, 64), 900, dtype=np.uint16), view_position="LATERAL")
    uid = store_in_spool(settings, session_factory, [lateral])
    dispatcher = _run(settings, session_factory, uid)
    assert dispatcher.outcomes == [("plan", "skipped")]
    study = _study(session_factory, uid)
    assert study.status is StudyStatus.SKIPPED
    assert "no routing rule matched" in study.error and "ViewPosition 'LATERAL' fails in ['PA', 'AP']" in study.error


def test_brain_mri_sequences_in_different_frames_are_skipped_by_prepare(tmp_path, database_url, session_factory):
    settings = Settings(home=tmp_path, database_url=database_url)
    datasets = brain_study()
    other_frame = generate_uid()
    for dataset in datasets:
        if dataset.SeriesDescription == "FLAIR":
            dataset.FrameOfReferenceUID = other_frame
    uid = store_in_spool(settings, session_factory, datasets)
    dispatcher = _run(settings, session_factory, uid)
    assert dispatcher.outcomes == [("plan", "done"), ("prepare", "skipped")]
    assert "not co-registered" in _study(session_factory, uid).error


def test_a_tilted_ct_fails_in_prepare_and_reprocess_starts_again_there(tmp_path, database_url, session_factory):
    settings = Settings(home=tmp_path, database_url=database_url)
    geometry = axial_geometry(16, 16, 6, slice_step=(0.0, 0.7, 2.4))
    values = np.zeros(geometry.shape, dtype=np.float32)
    uid = store_in_spool(settings, session_factory, ct_series(values, geometry, gantry_tilt=16.0))
    dispatcher = _run(settings, session_factory, uid)
    assert dispatcher.outcomes == [("plan", "done"), ("prepare", "failed")]
    study = _study(session_factory, uid)
    assert study.status is StudyStatus.FAILED and study.error.startswith("prepare: no CT series is one regular volume")

    env = {"M3EDGE_HOME": str(tmp_path), "M3EDGE_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin",
           "M3EDGE_BROKER_URL": "redis://127.0.0.1:9/0"}  # no broker there: the run waits for the sweeper
    result = subprocess.run([sys.executable, "-c", "from service.cli.main import main; main()", "studies",
                             "reprocess", uid], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "run " in result.stdout and "queued" in result.stdout
    with session_scope(session_factory) as session:
        runs = session.scalars(select(PipelineRun).order_by(PipelineRun.run_number)).all()
        assert [(r.run_number, r.trigger) for r in runs] == [(1, "complete"), (2, "reprocess")]
        stages = {s.stage: s.status for s in runs[1].stages}
        assert stages["plan"] is StageStatus.DONE and stages["prepare"] is StageStatus.PENDING
        assert runs[1].route == runs[0].route and runs[1].route["expert"] == "VISTA3D"


def test_reprocess_of_an_unknown_study_says_so(tmp_path, database_url):
    env = {"M3EDGE_HOME": str(tmp_path), "M3EDGE_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", "from service.cli.main import main; main()", "studies",
                             "reprocess", "1.2.3.4"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and "no study with Study Instance UID '1.2.3.4'" in result.stderr


def test_cxr_study_helper_routes_to_the_cxr_expert(tmp_path, database_url, session_factory):
    settings = Settings(home=tmp_path, database_url=database_url)
    uid = store_in_spool(settings, session_factory, cxr_study())
    ledger = PipelineLedger(session_factory)
    run_id = ledger.start_run(uid)
    claim = ledger.claim(run_id, "plan")
    outcome = build_stage_handlers(settings, session_factory)[claim.stage](claim)
    assert (outcome.route["expert"], outcome.route["modality"], outcome.priority) == ("CXR", "CXR", "routine")
    assert outcome.route["destinations"] == []
