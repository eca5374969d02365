"""Query/Retrieve against the running node with dcmtk's findscu, getscu and movescu (real peers).

The result objects are real draft SR and SEG written by ``dicom_node.results`` for a CT case, listed by a Report row.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from dicom_node.qr.matching import element_matches, value_matches
from dicom_node.results import build_draft_report, build_segmentation
from dicom_node.scp import DicomNode
from service.db.models import AuditEvent, PipelineRun, Report, Study, StudyStatus
from service.db.session import session_scope
from service.dicomweb.query_retrieve import QueryRetrieveFactory, build_query_retrieve
from service.ingest import DatabaseRecorder
from tests.conftest import require_tool
from tests.support.dcmtk import dcmtk_env, storescu
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.result_cases import FIXED_TIME, ct_case
from tests.support.scp_node import instances_in_db, node_settings
from tests.support.source_study import cxr_study, write_datasets

CALLERS = ("FINDSCU", "GETSCU", "MOVESCU")


def _write_results(folder: Path) -> dict:
    case = ct_case(demo=True)
    seg = build_segmentation(case.content.findings, case.uids, now=FIXED_TIME)
    draft = build_draft_report(case.content, case.uids, segmentation=seg, now=FIXED_TIME)
    folder.mkdir(parents=True)
    objects: dict = {}
    for kind, dataset in (("sr", draft), ("seg", seg)):
        path = folder / f"{kind}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        objects[kind] = {"path": str(path), "sop_instance_uid": str(dataset.SOPInstanceUID),
                         "sop_class_uid": str(dataset.SOPClassUID)}
    objects["overlay_png"] = str(folder / "overlay.png")  # not a DICOM object: Q/R must skip it
    stray = copy.deepcopy(draft)  # a real DICOM file, but outside HOME/results: never offered
    stray.SOPInstanceUID = pydicom.uid.generate_uid()
    stray.save_as(folder.parent.parent / "stray.dcm", enforce_file_format=True)
    objects["verified"] = {"path": str(folder / ".." / ".." / "stray.dcm"), "sop_instance_uid": stray.SOPInstanceUID,
                           "sop_class_uid": str(stray.SOPClassUID)}
    objects["revisions"] = 0
    return {"study_uid": case.study.study_instance_uid, "objects": objects, "sr": draft, "seg": seg}


def _seed(session_factory, results: dict) -> None:
    with session_scope(session_factory) as session:
        study = Study(study_uid=results["study_uid"], status=StudyStatus.DONE, modalities="CT")
        session.add(study)
        session.flush()
        run = PipelineRun(study_id=study.id, run_number=1, trigger="complete")
        session.add(run)
        session.flush()
        session.add(Report(study_id=study.id, run_id=run.id, objects=results["objects"], narrative="draft"))


@pytest.fixture
def store_peer(tmp_path):
    """A dcmtk storescp, the one known move destination."""
    port = free_port()
    folder = tmp_path / "received"
    folder.mkdir()
    process = subprocess.Popen([require_tool("storescp"), "-aet", "STORESCP", "-od", str(folder), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=dcmtk_env())
    try:
        yield port, folder
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def qr_node(tmp_path, session_factory, store_peer):
    port, _ = store_peer
    settings = node_settings(tmp_path / "home", dicom_allowed_aes=",".join(CALLERS),
                             destinations=f"STORESCP@127.0.0.1:{port}")
    results = _write_results(settings.results_dir / "run-1")
    _seed(session_factory, results)
    recorder = DatabaseRecorder(session_factory).start()
    node = DicomNode(settings, recorder, query_retrieve=build_query_retrieve(settings, session_factory))
    node.start()
    try:
        yield node, results
    finally:
        node.stop()
        recorder.close()


def _run(tool: str, port: int, keys: list[str], *options: str, calling_ae: str) -> subprocess.CompletedProcess:
    command = [require_tool(tool), "-v", "-S", "-aet", calling_ae, "-aec", "M3EDGE", *options]
    for key in keys:
        command += ["-k", key]
    command += ["127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=dcmtk_env())


def _responses(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("rsp*.dcm"))]


def _audit(session_factory) -> list[AuditEvent]:
    with session_factory() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_findscu_study_and_series_level(qr_node, tmp_path, session_factory):
    node, results = qr_node
    study_dir, series_dir = tmp_path / "find-study", tmp_path / "find-series"
    study_dir.mkdir(), series_dir.mkdir()
    found = _run("findscu", node.port, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID",
                                        "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "StudyDate=19000101-"],
                 "-X", "-od", str(study_dir), calling_ae="FINDSCU")
    assert found.returncode == 0, found.stdout + found.stderr
    (study,) = _responses(study_dir)
    assert study.StudyInstanceUID == results["study_uid"]
    assert study.PatientID == results["sr"].PatientID
    assert sorted(study.ModalitiesInStudy) == ["SEG", "SR"]
    assert int(study.NumberOfStudyRelatedInstances) == 2

    found = _run("findscu", node.port, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={results['study_uid']}",
                                        "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances"],
                 "-X", "-od", str(series_dir), calling_ae="FINDSCU")
    assert found.returncode == 0, found.stdout + found.stderr
    series = {ds.Modality: ds for ds in _responses(series_dir)}
    assert set(series) == {"SR", "SEG"}
    assert series["SR"].SeriesInstanceUID == results["sr"].SeriesInstanceUID
    assert series["SEG"].SeriesInstanceUID == results["seg"].SeriesInstanceUID

    image_dir = tmp_path / "find-image"
    image_dir.mkdir()
    found = _run("findscu", node.port, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={results['study_uid']}",
                                        "PatientName=" + str(results["sr"].PatientName)[:4].lower() + "*",
                                        "SOPClassUID", "SOPInstanceUID"],
                 "-X", "-od", str(image_dir), calling_ae="FINDSCU")
    assert found.returncode == 0, found.stdout + found.stderr
    assert sorted(ds.SOPInstanceUID for ds in _responses(image_dir)) == sorted(
        [results["sr"].SOPInstanceUID, results["seg"].SOPInstanceUID])

    nothing_dir = tmp_path / "find-none"
    nothing_dir.mkdir()
    found = _run("findscu", node.port, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.3.4"], "-X", "-od",
                 str(nothing_dir), calling_ae="FINDSCU")
    assert found.returncode == 0 and _responses(nothing_dir) == []
    events = [e for e in _audit(session_factory) if e.action == "dicom.find"]
    assert [e.actor for e in events] == ["dicom:FINDSCU"] * 4
    assert events[0].study_uid == results["study_uid"] and events[0].detail["matches"] == 1


def test_getscu_retrieves_the_sr_and_seg_unchanged(qr_node, tmp_path, session_factory):
    node, results = qr_node
    folder = tmp_path / "got"
    folder.mkdir()
    got = _run("getscu", node.port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={results['study_uid']}"],
               "-od", str(folder), calling_ae="GETSCU")
    assert got.returncode == 0, got.stdout + got.stderr
    received = {pydicom.dcmread(p).SOPInstanceUID: p for p in folder.iterdir()}
    assert set(received) == {results["sr"].SOPInstanceUID, results["seg"].SOPInstanceUID}
    for kind in ("sr", "seg"):
        original = pydicom.dcmread(results["objects"][kind]["path"])
        copy = pydicom.dcmread(received[original.SOPInstanceUID])
        assert copy == original  # every data element, pixel data included
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    (event,) = [e for e in _audit(session_factory) if e.action == "dicom.get"]
    assert event.actor == "dicom:GETSCU" and event.study_uid == results["study_uid"] and event.detail["matches"] == 2


def test_movescu_to_a_known_destination(qr_node, store_peer, session_factory):
    node, results = qr_node
    _, folder = store_peer
    moved = _run("movescu", node.port, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={results['study_uid']}",
                                        f"SeriesInstanceUID={results['seg'].SeriesInstanceUID}"],
                 "-aem", "STORESCP", calling_ae="MOVESCU")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    files = wait_for(lambda: list(folder.iterdir()), timeout=30, message="storescp received nothing")
    (copy,) = [pydicom.dcmread(p) for p in files]
    assert copy == pydicom.dcmread(results["objects"]["seg"]["path"])
    (event,) = [e for e in _audit(session_factory) if e.action == "dicom.move"]
    assert event.outcome == "success" and event.target.startswith("STORESCP@127.0.0.1:")


def test_movescu_to_an_unknown_destination_is_refused(qr_node, store_peer, session_factory):
    node, results = qr_node
    _, folder = store_peer
    moved = _run("movescu", node.port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={results['study_uid']}"],
                 "-aem", "ELSEWHERE", calling_ae="MOVESCU")
    assert "Refused: MoveDestinationUnknown" in moved.stdout + moved.stderr
    assert list(folder.iterdir()) == []
    (event,) = [e for e in _audit(session_factory) if e.action == "dicom.move"]
    assert event.outcome == "refused" and event.target == "ELSEWHERE"


def test_unknown_calling_ae_is_refused(qr_node, tmp_path):
    node, results = qr_node
    found = _run("findscu", node.port, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], "-X", "-od", str(tmp_path),
                 calling_ae="STRANGER")
    assert found.returncode != 0
    assert "Calling AE Title Not Recognized" in found.stdout + found.stderr
    assert _responses(tmp_path) == []


def test_retrieve_without_the_unique_key_fails(qr_node, tmp_path):
    node, _ = qr_node
    folder = tmp_path / "got"
    folder.mkdir()
    got = _run("getscu", node.port, ["QueryRetrieveLevel=SERIES"], "-od", str(folder), calling_ae="GETSCU")
    assert "Received C-GET Response (Error: DataSetDoesNotMatchSOPClass)" in got.stdout + got.stderr  # A900
    assert list(folder.iterdir()) == []


def test_storage_still_works_on_a_node_with_query_retrieve(qr_node, tmp_path, session_factory):
    """The storage contexts accept C-GET's role selection; a plain C-STORE sender (no role selection) is unaffected."""
    node, _ = qr_node
    files = write_datasets(tmp_path / "cxr", cxr_study().all_instances)
    sent = storescu(node.port, files, calling_ae="FINDSCU")
    assert sent.returncode == 0 and set(sent.responses().values()) == {"Success"}, sent.output
    assert node.wait_until_recorded(60), "the node did not file its journaled instances in time"
    stored = [row[0].sop_instance_uid for row in instances_in_db(session_factory)]
    assert stored == [cxr_study().all_instances[0].SOPInstanceUID]


def test_every_receiving_process_serves_query_retrieve_and_storage(tmp_path, session_factory, database_url, store_peer):
    """DICOM_RECEIVERS=2: the factory is pickled into each receiving process, which opens its own database engine."""
    port, received = store_peer
    settings = node_settings(tmp_path / "home", database_url=database_url, dicom_receivers=2,
                             dicom_allowed_aes=",".join(CALLERS), destinations=f"STORESCP@127.0.0.1:{port}")
    results = _write_results(settings.results_dir / "run-1")
    _seed(session_factory, results)
    recorder = DatabaseRecorder(session_factory).start()
    node = DicomNode(settings, recorder, query_retrieve_factory=QueryRetrieveFactory(settings, session_factory))
    node.start()
    try:
        for attempt in range(4):  # the processes take associations in turn: each serves at least one
            folder = tmp_path / f"find-{attempt}"
            folder.mkdir()
            found = _run("findscu", node.port, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], "-X", "-od",
                         str(folder), calling_ae="FINDSCU")
            assert found.returncode == 0, found.stdout + found.stderr
            assert [ds.StudyInstanceUID for ds in _responses(folder)] == [results["study_uid"]]
        moved = _run("movescu", node.port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={results['study_uid']}"],
                     "-aem", "STORESCP", calling_ae="MOVESCU")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        wait_for(lambda: len(list(received.iterdir())) == 2, timeout=30, message="the move did not arrive")
        files = write_datasets(tmp_path / "cxr", cxr_study().all_instances)
        sent = storescu(node.port, files, calling_ae="FINDSCU")
        assert sent.returncode == 0 and set(sent.responses().values()) == {"Success"}, sent.output
    finally:
        node.stop()
        recorder.close()
    actions = [e.action for e in _audit(session_factory)]
    assert actions.count("dicom.find") == 4 and actions.count("dicom.move") == 1
    assert [row[0].sop_instance_uid for row in instances_in_db(session_factory)] == [
        cxr_study().all_instances[0].SOPInstanceUID]


def test_query_retrieve_is_given_as_an_object_or_a_factory_not_both(tmp_path, session_factory):
    settings = node_settings(tmp_path / "home")
    factory = QueryRetrieveFactory(settings, session_factory)
    with pytest.raises(ValueError, match="not both"):
        DicomNode(settings, DatabaseRecorder(session_factory), query_retrieve=factory(),
                  query_retrieve_factory=factory)


@pytest.mark.parametrize(
    ("vr", "query", "candidate", "expected"),
    [
        ("PN", "Synth*", "Synthetic^Patient", True),
        ("PN", "synthetic^patient", "Synthetic^Patient", True),  # person names match without regard to case
        ("LO", "Abd?men*", "Abdomen 2.5mm", True),
        ("LO", "abdomen*", "Abdomen 2.5mm", False),
        ("LO", "a.b", "axb", False),  # no regular expressions slip through
        ("DA", "20260101-20260131", "20260115", True),
        ("DA", "-20251231", "20260115", False),
        ("DA", "20260101-", "", False),
        ("UI", "1.2*", "1.2.3", False),  # no wildcards in UIDs
    ],
)
def test_cfind_value_matching(vr, query, candidate, expected):
    assert value_matches(vr, query, candidate) is expected


def test_cfind_uid_list_and_universal_matching():
    assert element_matches("UI", ["1.2.3", "1.2.4"], ["1.2.4"])
    assert not element_matches("UI", ["1.2.3"], ["1.2.4"])
    assert element_matches("PN", [], ["anyone"])
