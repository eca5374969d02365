"""C-FIND wildcards that blew up (issue 13, point 4): ``StudyDescription=********!`` was a regular expression that
took 33 s per query (10x per extra ``*``), holding the interpreter lock so a C-ECHO timed out meanwhile. Against a real
``m3edge scp`` (two receiving processes) holding a draft SR and SEG: patterns of many stars answer at once (the old
regex would take longer than the universe), concurrent C-ECHOs are answered, and over-long values are refused."""

from __future__ import annotations

import subprocess

import pytest
from sqlalchemy import select

from dicom_node.results import build_draft_report, build_segmentation
from service.config import Settings
from service.db.models import PipelineRun, Report, Study, StudyStatus
from service.db.session import create_db_engine, make_session_factory, session_scope
from tests.conftest import require_tool
from tests.security.conftest import ALLOWED_AE
from tests.support.dcmtk import dcmtk_env, echoscu
from tests.support.result_cases import FIXED_TIME, ct_case

# Before: a regular expression of 40 ``.*`` then ``!``: fullmatch against a 20-character description backtracks
# through about C(60, 40) = 4 x 10^15 splits. Now: one pass per star segment.
BOMB = "*" * 40 + "!"


@pytest.fixture(scope="module")
def held_study(scp_node):
    """A draft SR and SEG of a CT case held by the node (a report row of its database pointing at them)."""
    settings = Settings(home=scp_node.home)
    case = ct_case(demo=True)
    seg = build_segmentation(case.content.findings, case.uids, now=FIXED_TIME)
    draft = build_draft_report(case.content, case.uids, segmentation=seg, now=FIXED_TIME)
    folder = settings.results_dir / case.study.study_instance_uid / "run-1"
    folder.mkdir(parents=True)
    objects: dict = {}
    for kind, dataset in (("sr", draft), ("seg", seg)):
        path = folder / f"{kind}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        objects[kind] = {"path": str(path), "sop_instance_uid": str(dataset.SOPInstanceUID),
                         "sop_class_uid": str(dataset.SOPClassUID)}
    engine = create_db_engine(settings.effective_database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            study = Study(study_uid=case.study.study_instance_uid, status=StudyStatus.DONE, modalities="CT")
            session.add(study)
            session.flush()
            run = PipelineRun(study_id=study.id, run_number=1, trigger="complete")
            session.add(run)
            session.flush()
            session.add(Report(study_id=study.id, run_id=run.id, objects=objects, narrative="draft"))
        with make_session_factory(engine)() as session:
            assert session.scalar(select(Report.id)) is not None
    finally:
        engine.dispose()
    return case.study.study_instance_uid


def _findscu(port: int, *keys: str) -> subprocess.Popen:
    command = [require_tool("findscu"), "-v", "-S", "-aet", ALLOWED_AE, "-aec", "M3EDGE"]
    for key in ("QueryRetrieveLevel=SERIES", "StudyInstanceUID", *keys):
        command += ["-k", key]
    return subprocess.Popen([*command, "127.0.0.1", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dcmtk_env())


@pytest.mark.timeout(300)
def test_wildcard_bombs_answer_at_once_and_a_concurrent_echo_is_answered(scp_node, held_study):
    # The control: the same query shape with a pattern that matches finds the held series.
    control = _findscu(scp_node.port, "SeriesDescription=*", "StudyDescription")
    out, _ = control.communicate(timeout=120)
    assert control.returncode == 0, out
    assert out.count("(Pending)") == 2 and held_study in out  # the SR's series and the SEG's
    # Four bombs at once (so each receiving process holds some), then a C-ECHO while they run.
    bombs = [_findscu(scp_node.port, f"{key}={BOMB}") for key in
             ("SeriesDescription", "StudyDescription", "PatientName", "SeriesDescription")]
    try:
        echo = echoscu(scp_node.port, calling_ae=ALLOWED_AE)
        assert echo.returncode == 0, echo.stdout + echo.stderr
        for bomb in bombs:
            out, _ = bomb.communicate(timeout=120)
            assert bomb.returncode == 0, out
            assert "(Pending)" not in out  # nothing ends with "!"
            assert "Final Find Response (Success)" in out
    finally:
        for bomb in bombs:
            if bomb.poll() is None:
                bomb.kill()
                bomb.wait()


@pytest.mark.timeout(120)
def test_a_query_value_beyond_its_bound_is_refused_out_of_resources(scp_node, held_study):
    long = _findscu(scp_node.port, "SeriesDescription=" + "*?" * 200)
    out, _ = long.communicate(timeout=60)
    assert "Final Find Response (Refused: OutOfResources)" in out, out
    assert echoscu(scp_node.port, calling_ae=ALLOWED_AE).returncode == 0
