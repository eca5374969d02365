"""Two patients' studies that share a Series Instance UID (and one SOP Instance UID) never show each other's data.

Both studies arrive through the real node by dcmtk's storescu; the pipeline then runs on each (the real stage handlers
with the small demo models). Neither study shows the other's patient or instances: in the database, in QIDO-RS and
WADO-RS, in Query/Retrieve (dcmtk findscu and getscu), and in its draft SR and SEG. The second arrival is flagged
(the study's API detail, the dashboard's study page, the log, the metric), and the log carries UIDs only.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from dicom_node.scp import DicomNode
from service.api.app import create_app
from service.db.models import Instance, Report, Series, Study, StudyStatus, UidCollision, UidKind
from service.db.session import session_scope
from service.dicomweb.query_retrieve import build_query_retrieve
from service.ingest import DatabaseRecorder
from service.pipeline.intake import PipelineIntake
from service.pipeline.ledger import PipelineLedger
from service.security import add_user
from tests.conftest import require_tool
from tests.integration.api.conftest import RecordingDispatcher
from tests.support.api_server import running_app
from tests.support.dcmtk import dcmtk_env, storescu
from tests.support.pipeline_study import ct_study, run_inline
from tests.support.scp_node import node_settings
from tests.support.synthetic_series import write_datasets

pytestmark = pytest.mark.slow

PATIENTS = {"a": ("COLLIDE-A", "Alpha^Anna"), "b": ("COLLIDE-B", "Bravo^Bert")}


def _two_patients_one_series_uid() -> dict[str, list[pydicom.Dataset]]:
    """Study A, and study B of another patient whose CT series reuses A's Series Instance UID and, for its first
    slice, A's first SOP Instance UID (as a misconfigured modality or a bad anonymiser does)."""
    a = ct_study()
    b = ct_study()
    b_study = generate_uid()
    for index, dataset in enumerate(b):
        dataset.StudyInstanceUID = b_study
        dataset.SeriesInstanceUID = a[0].SeriesInstanceUID
        dataset.FrameOfReferenceUID = a[0].FrameOfReferenceUID
        dataset.SOPInstanceUID = a[0].SOPInstanceUID if index == 0 else generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        pixels = dataset.pixel_array.astype(np.int16)
        dataset.PixelData = np.flipud(pixels).tobytes()  # another patient: other pixels too
    for key, datasets in (("a", a), ("b", b)):
        for dataset in datasets:
            dataset.PatientID, dataset.PatientName = PATIENTS[key]
    return {"a": a, "b": b}


def _complete(session_factory, study_uid: str) -> None:
    with session_scope(session_factory) as session:
        session.execute(update(Study).where(Study.study_uid == study_uid).values(status=StudyStatus.COMPLETE))


def _patient(dataset) -> tuple[str, str]:
    return str(dataset.PatientID), str(dataset.PatientName)


@pytest.fixture
def two_studies(tmp_path, database_url, session_factory, caplog, small_demo_models_dir):
    settings = node_settings(tmp_path / "home", database_url=database_url, study_idle_seconds=3600,
                             dicom_allowed_aes="STORESCU,FINDSCU,GETSCU", vlm_max_new_tokens=12)
    settings.models_dir.parent.mkdir(parents=True, exist_ok=True)
    settings.models_dir.symlink_to(small_demo_models_dir, target_is_directory=True)
    studies = _two_patients_one_series_uid()
    recorder = DatabaseRecorder(session_factory).start()
    node = DicomNode(settings, recorder, query_retrieve=build_query_retrieve(settings, session_factory))
    node.start()
    try:
        with caplog.at_level(logging.WARNING, logger="service.ingest"):
            for key in ("a", "b"):
                sent = storescu(node.port, write_datasets(studies[key], tmp_path / "sent" / key))
                assert sent.returncode == 0, sent.output
                assert set(sent.responses().values()) == {"Success"}, sent.output
            # a success means journaled: the rows (and the collision's warning) follow in the background
            assert node.wait_until_recorded(60), "the node did not file its journaled instances in time"
        log = caplog.text
        for key in ("a", "b"):
            uid = str(studies[key][0].StudyInstanceUID)
            _complete(session_factory, uid)
            outcomes = run_inline(settings, session_factory, uid).outcomes
            assert outcomes[-1] == ("deliver", "done"), outcomes
        yield {"settings": settings, "studies": studies, "node": node, "log": log}
    finally:
        node.stop()
        recorder.close()


def _uids(datasets) -> set[str]:
    return {str(d.SOPInstanceUID) for d in datasets}


def _check_database(session_factory, studies) -> None:
    series_uid = str(studies["a"][0].SeriesInstanceUID)
    with session_scope(session_factory) as session:
        rows = session.execute(
            select(Study.study_uid, Series.id, Instance.sop_instance_uid, Instance.path)
            .join(Series, Series.study_id == Study.id).join(Instance, Instance.series_id == Series.id)
            .where(Series.series_uid == series_uid)
        ).all()
        collisions = {(c.kind, c.uid) for c in session.scalars(select(UidCollision))}
    by_study: dict[str, set[str]] = {}
    series_rows: dict[str, set[int]] = {}
    for study_uid, series_id, sop_uid, path in rows:
        by_study.setdefault(study_uid, set()).add(sop_uid)
        series_rows.setdefault(study_uid, set()).add(series_id)
        assert path.startswith(study_uid + "/"), path  # each copy in its own study's spool folder
    for key in ("a", "b"):
        assert by_study[str(studies[key][0].StudyInstanceUID)] == _uids(studies[key])
    assert len(set().union(*series_rows.values())) == 2  # one series row per study, never a shared one
    assert collisions == {(UidKind.SERIES, series_uid), (UidKind.INSTANCE, str(studies["a"][0].SOPInstanceUID))}


def _check_reports(session_factory, studies) -> None:
    with session_scope(session_factory) as session:
        reports = {uid: objects for uid, objects in session.execute(
            select(Study.study_uid, Report.objects).join(Report, Report.study_id == Study.id))}
    for key, datasets in studies.items():
        objects = reports[str(datasets[0].StudyInstanceUID)]
        sr, seg = pydicom.dcmread(objects["sr"]["path"]), pydicom.dcmread(objects["seg"]["path"])
        for result in (sr, seg):
            assert _patient(result) == PATIENTS[key] and result.StudyInstanceUID == datasets[0].StudyInstanceUID
        evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                    for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
        assert evidence == _uids(datasets) | {seg.SOPInstanceUID}
        seg_sources = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        assert seg_sources == _uids(datasets)


def _check_dicomweb(base: str, token: str, studies) -> None:
    client = DICOMwebClient(url=base + "/dicomweb", headers={"Authorization": f"Bearer {token}"})
    series_uid = str(studies["a"][0].SeriesInstanceUID)
    for key, datasets in studies.items():
        study_uid = str(datasets[0].StudyInstanceUID)
        found = client.search_for_instances(study_uid, series_uid)
        assert {item["00080018"]["Value"][0] for item in found} == _uids(datasets)
        retrieved = client.retrieve_series(study_uid, series_uid)
        assert {str(d.SOPInstanceUID) for d in retrieved} == _uids(datasets)
        assert {_patient(d) for d in retrieved} == {PATIENTS[key]}
        shared = client.retrieve_instance(study_uid, series_uid, str(studies["a"][0].SOPInstanceUID))
        assert _patient(shared) == PATIENTS[key] and shared.StudyInstanceUID == study_uid
        metadata = client.retrieve_series_metadata(study_uid, series_uid)
        assert {item["00100020"]["Value"][0] for item in metadata} == {PATIENTS[key][0]}


def _check_query_retrieve(port: int, studies, folder: Path) -> None:
    for key, datasets in studies.items():
        study_uid = str(datasets[0].StudyInstanceUID)
        out = folder / key
        out.mkdir(parents=True)
        common = ["-S", "-aec", "M3EDGE", "-k", f"StudyInstanceUID={study_uid}"]
        found = subprocess.run(
            [require_tool("findscu"), "-aet", "FINDSCU", *common, "-k", "QueryRetrieveLevel=IMAGE", "-k", "PatientID",
             "-k", "SOPInstanceUID",
             "-X", "-od", str(out), "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60,
            env=dcmtk_env())
        assert found.returncode == 0, found.stderr
        answers = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
        assert answers and {str(a.PatientID) for a in answers} == {PATIENTS[key][0]}
        got = subprocess.run(
            [require_tool("getscu"), "-aet", "GETSCU", *common, "-k", "QueryRetrieveLevel=STUDY", "-od", str(out), "127.0.0.1", str(port)],
            capture_output=True, text=True, timeout=60, env=dcmtk_env())
        assert got.returncode == 0, got.stderr
        retrieved = [pydicom.dcmread(p) for p in out.iterdir() if not p.name.startswith("rsp")]
        assert {m.Modality for m in retrieved} >= {"SR", "SEG"}
        assert {(_patient(d), str(d.StudyInstanceUID)) for d in retrieved} == {(PATIENTS[key], study_uid)}


def test_two_patients_sharing_a_series_uid_are_kept_apart_everywhere(two_studies, session_factory, tmp_path):
    studies, settings = two_studies["studies"], two_studies["settings"]
    _check_database(session_factory, studies)
    _check_reports(session_factory, studies)
    _check_query_retrieve(two_studies["node"].port, studies, tmp_path / "qr")

    a_uid, b_uid = (str(studies[k][0].StudyInstanceUID) for k in ("a", "b"))
    series_uid = str(studies["a"][0].SeriesInstanceUID)
    log = two_studies["log"]
    assert f"Series Instance UID {series_uid} arrived in study {b_uid}" in log and a_uid in log
    assert not any(text in log for patient in PATIENTS.values() for text in (*patient, patient[1].split("^")[0]))

    ledger = PipelineLedger(session_factory)
    app = create_app(settings, session_factory, PipelineIntake(ledger, RecordingDispatcher(ledger)))
    with session_scope(session_factory) as session:
        _, token = add_user(session, "rex", "reviewer", display_name="Dr Rex Reviewer", password="a long secret here")
    with running_app(app) as base:
        _check_dicomweb(base, token, studies)
        headers = {"Authorization": f"Bearer {token}"}
        detail = httpx.get(f"{base}/api/v1/studies/{b_uid}", headers=headers, timeout=30).json()
        assert {(c["kind"], c["uid"], c["other_study_uid"], c["arrived_here_later"])
                for c in detail["uid_collisions"]} == {("series", series_uid, a_uid, True),
                                                       ("instance", str(studies["a"][0].SOPInstanceUID), a_uid, True)}
        first = httpx.get(f"{base}/api/v1/studies/{a_uid}", headers=headers, timeout=30).json()
        assert {c["arrived_here_later"] for c in first["uid_collisions"]} == {False}
        with httpx.Client(base_url=base, timeout=30) as browser:
            login = browser.get("/ui/login")
            csrf = login.text.split('name="csrf_token" value="')[1].split('"')[0]
            browser.post("/ui/login", data={"username": "rex", "password": "a long secret here", "csrf_token": csrf})
            page = browser.get(f"/ui/studies/{b_uid}")
            assert page.status_code == 200 and 'id="uid-collisions"' in page.text and series_uid in page.text
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
        assert 'm3edge_uid_collisions_total{kind="series"} 1.0' in metrics
        assert 'm3edge_uid_collisions_total{kind="instance"} 1.0' in metrics
