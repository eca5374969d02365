"""DICOMweb over real HTTP with the ``dicomweb-client`` package: QIDO-RS, WADO-RS and STOW-RS against the running app.

A CT study arrives the usual way (storescu -> the node); an MR series arrives by STOW-RS and must take the same
durable path, be recorded, and be completed by the same study assembler.
"""

from __future__ import annotations

import copy
from io import BytesIO
from pathlib import Path
import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from requests.exceptions import HTTPError
from sqlalchemy import select

from dicom_node.results import build_draft_report, build_segmentation
from dicom_node.scp import DicomNode
from service.api.app import create_app
from service.assembly import build_assembler
from service.db.models import AuditEvent, Instance, PipelineRun, Report, Series, Study, StudyStatus
from service.db.session import session_scope
from service.dicomweb.metadata_keeper import MetadataKeeper
from service.dicomweb.multipart import FilePart, MultipartError, encode_parts, media_type_parameters, parse_parts
from service.ingest import DatabaseRecorder
from service.pipeline.intake import PipelineIntake
from service.pipeline.ledger import PipelineLedger
from service.security import add_user
from tests.support.api_server import running_app
from tests.support.dcmtk import storescu
from tests.support.result_cases import FIXED_TIME, ct_case
from tests.support.scp_node import node_settings
from tests.support.source_study import brain_mr_study, ct_study, write_datasets


class _SentNothing:
    """Stand-in for the Celery dispatcher: these tests only read and store; the workers are tested elsewhere."""

    def __init__(self, ledger):
        self.ledger = ledger

    def dispatch(self, ticket, countdown=0):
        self.ledger.mark_queued(ticket)
        return True

    def deliver(self, run_id):
        return True


@pytest.fixture
def service(tmp_path, database_url, session_factory):
    """The API and the DICOM node over one HOME and database; the CT study already received by C-STORE."""
    settings = node_settings(tmp_path / "home", database_url=database_url, study_idle_seconds=3600,
                             study_release_grace_seconds=0)
    settings.spool_dir.mkdir(parents=True)
    ledger = PipelineLedger(session_factory)
    app = create_app(settings, session_factory, PipelineIntake(ledger, _SentNothing(ledger)))
    with session_scope(session_factory) as session:
        _, reviewer = add_user(session, "rex", "reviewer", display_name="Dr Rex Reviewer")
    ct = ct_study()
    files = write_datasets(tmp_path / "ct", ct.all_instances)
    recorder = DatabaseRecorder(session_factory).start()
    node = DicomNode(settings, recorder)
    node.start()
    try:
        sent = storescu(node.port, files)
        assert sent.returncode == 0, sent.output
    finally:
        node.stop()
        recorder.close()
    MetadataKeeper(session_factory, settings.spool_dir).keep_pending(quiet_seconds=0)  # as serve does once quiet
    with running_app(app) as base:
        yield {"base": base, "token": reviewer, "settings": settings, "ct": ct, "ct_files": files}


def _client(service) -> DICOMwebClient:
    return DICOMwebClient(url=service["base"] + "/dicomweb", headers={"Authorization": f"Bearer {service['token']}"})


def _value(item: dict, tag: str):
    return item[tag]["Value"][0] if "Value" in item[tag] else None


def _actions(session_factory, actor="rex") -> list[str]:
    with session_factory() as session:
        return list(session.scalars(select(AuditEvent.action).where(AuditEvent.actor == actor).order_by(AuditEvent.id)))


def test_qido_searches_what_the_node_received(service, session_factory):
    client = _client(service)
    ct = service["ct"]
    mr = brain_mr_study()
    client.store_instances(mr.series["t1"])

    studies = client.search_for_studies()
    assert {_value(s, "0020000D") for s in studies} == {ct.study_instance_uid, mr.study_instance_uid}
    (found,) = client.search_for_studies(search_filters={"ModalitiesInStudy": "CT"})
    assert _value(found, "0020000D") == ct.study_instance_uid
    assert _value(found, "00201208") == len(ct.all_instances) and _value(found, "00201206") == 1
    study_date = ct.all_instances[0].StudyDate
    assert len(client.search_for_studies(search_filters={"StudyDate": f"{study_date}-{study_date}"})) >= 1
    assert client.search_for_studies(search_filters={"StudyDate": "19000101-19000102"}) == []
    assert len(client.search_for_studies(limit=1)) == 1 and len(client.search_for_studies(offset=1)) == 1

    (series,) = client.search_for_series(study_instance_uid=ct.study_instance_uid)
    assert _value(series, "0020000E") == ct.series["ct"][0].SeriesInstanceUID
    assert _value(series, "00080060") == "CT" and _value(series, "00201209") == len(ct.all_instances)
    assert [_value(s, "00080060") for s in client.search_for_series(search_filters={"Modality": "MR"})] == ["MR"]
    assert client.search_for_series(search_filters={"SeriesDescription": "Abdomen*"})[0]["0020000E"] == \
        series["0020000E"]

    instances = client.search_for_instances(study_instance_uid=ct.study_instance_uid,
                                            series_instance_uid=_value(series, "0020000E"))
    assert sorted(_value(i, "00080018") for i in instances) == sorted(ds.SOPInstanceUID for ds in ct.all_instances)
    one = ct.all_instances[2].SOPInstanceUID
    (match,) = client.search_for_instances(search_filters={"SOPInstanceUID": one})
    assert _value(match, "00083002") == str(ct.all_instances[2].file_meta.TransferSyntaxUID)

    # Patient context kept from the instances the node received (PS3.18 matching: PN any case, wildcards)
    (by_name,) = client.search_for_studies(search_filters={"PatientName": "synthetic*", "ModalitiesInStudy": "CT"})
    assert _value(by_name, "0020000D") == ct.study_instance_uid
    assert _value(by_name, "00100010")["Alphabetic"] == str(ct.all_instances[0].PatientName)
    assert _value(by_name, "00100020") == str(ct.all_instances[0].PatientID)
    (by_id,) = client.search_for_studies(search_filters={"PatientID": str(ct.all_instances[0].PatientID)})
    assert _value(by_id, "0020000D") == ct.study_instance_uid
    with pytest.raises(HTTPError, match="400"):
        client.search_for_studies(search_filters={"PatientBirthDate": "19700101"})  # never kept
    assert "dicomweb.search" in _actions(session_factory)


def _spool_bytes(service, session_factory, sop_uid: str) -> bytes:
    with session_factory() as session:
        path = session.scalars(select(Instance.path).where(Instance.sop_instance_uid == sop_uid)).one()
    return (service["settings"].spool_dir / path).read_bytes()


def test_wado_returns_instances_byte_exact_and_their_metadata(service, session_factory):
    client = _client(service)
    ct = service["ct"]
    original = ct.all_instances[1]
    series_uid = original.SeriesInstanceUID
    got = client.retrieve_instance(ct.study_instance_uid, series_uid, original.SOPInstanceUID)
    assert got == pydicom.dcmread(service["ct_files"][1])

    headers = {"Authorization": f"Bearer {service['token']}"}
    url = f"{service['base']}/dicomweb/studies/{ct.study_instance_uid}/series/{series_uid}/instances/" \
          f"{original.SOPInstanceUID}"
    raw = httpx.get(url, headers=headers)
    media_type, parameters = media_type_parameters(raw.headers["content-type"])
    assert media_type == "multipart/related" and parameters["type"] == "application/dicom"
    (part,) = parse_parts(raw.content, parameters["boundary"])
    assert bytes(part.content) == _spool_bytes(service, session_factory, original.SOPInstanceUID)
    assert "transfer-syntax=1.2.840.10008.1.2.1" in part.content_type

    jpeg = httpx.get(url, headers={**headers, "Accept": 'multipart/related; type="application/dicom"; '
                                                          "transfer-syntax=1.2.840.10008.1.2.4.50"})
    assert jpeg.status_code == 406 and "never transcoded" in jpeg.json()["detail"]

    whole = client.retrieve_series(ct.study_instance_uid, series_uid)
    assert sorted(ds.SOPInstanceUID for ds in whole) == sorted(ds.SOPInstanceUID for ds in ct.all_instances)

    metadata = client.retrieve_instance_metadata(ct.study_instance_uid, series_uid, original.SOPInstanceUID)
    assert _value(metadata, "00100010")["Alphabetic"] == str(original.PatientName)
    assert set(metadata["7FE00010"]) == {"vr", "BulkDataURI"}  # pixel data stays out of metadata: a link to it
    assert len(client.retrieve_study_metadata(ct.study_instance_uid)) == len(ct.all_instances)
    with pytest.raises(HTTPError, match="404"):
        client.retrieve_instance(ct.study_instance_uid, series_uid, "1.2.3.4")

    with session_factory() as session:  # a file purged from the spool behind the catalogue's back is left out
        gone = session.scalars(select(Instance.path).where(Instance.sop_instance_uid == original.SOPInstanceUID)).one()
    (service["settings"].spool_dir / gone).unlink()
    assert len(client.retrieve_series(ct.study_instance_uid, series_uid)) == len(ct.all_instances) - 1

    actions = _actions(session_factory)
    assert actions.count("dicomweb.instance.read") == 4 and actions.count("dicomweb.metadata.read") == 2
    with session_factory() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "dicomweb.instance.read")).first()
    assert event.study_uid == ct.study_instance_uid and event.remote_addr == "127.0.0.1"
    assert event.target == original.SOPInstanceUID


def test_stow_stores_through_the_durable_path_and_the_study_assembles(service, session_factory):
    client = _client(service)
    settings = service["settings"]
    mr = brain_mr_study()
    sent = mr.series["flair"]
    response = client.store_instances(sent)
    stored = response.ReferencedSOPSequence
    assert sorted(i.ReferencedSOPInstanceUID for i in stored) == sorted(ds.SOPInstanceUID for ds in sent)
    assert "FailedSOPSequence" not in response

    with session_factory() as session:
        rows = session.execute(select(Instance, Series, Study).join(Series, Instance.series_id == Series.id)
                               .join(Study, Series.study_id == Study.id)
                               .where(Study.study_uid == mr.study_instance_uid)).all()
        study = rows[0][2]
        assert study.status is StudyStatus.RECEIVING and study.last_released_at is not None
    assert len(rows) == len(sent) and {i.calling_ae for i, _, _ in rows} == {"STOW-RS"}
    for instance, series, _ in rows:
        assert instance.path == f"{mr.study_instance_uid}/{series.series_uid}/{instance.sop_instance_uid}.dcm"
        on_disk = pydicom.dcmread(settings.spool_dir / instance.path)
        original = next(ds for ds in sent if ds.SOPInstanceUID == instance.sop_instance_uid)
        assert on_disk == original  # the data set as sent; the file meta is the node's own
    assert list((settings.spool_dir / ".incoming").iterdir()) == []  # no temporary file left behind

    completed = []
    build_assembler(settings, session_factory, completed.append).sweep()
    assert mr.study_instance_uid in completed  # released at the end of the request, as after an association
    with session_factory() as session:
        study = session.scalars(select(Study).where(Study.study_uid == mr.study_instance_uid)).one()
        assert study.status is StudyStatus.COMPLETE and study.completion_reason == "released"

    again = client.store_instances(sent[:1])  # a re-send of the same bytes: success, nothing new recorded
    assert len(again.ReferencedSOPSequence) == 1
    changed = copy.deepcopy(sent[0])
    changed.SeriesDescription = "changed"
    conflict = httpx.post(
        f"{service['base']}/dicomweb/studies", headers=_stow_headers(service), content=_stow_body([changed]))
    assert conflict.status_code == 202  # kept beside the first copy, with a warning, as C-STORE does
    with session_factory() as session:
        flags = session.scalars(select(Instance.conflict).where(Instance.sop_instance_uid == changed.SOPInstanceUID))
        assert sorted(flags) == [False, True]


def _stow_headers(service, boundary="b0undary") -> dict:
    return {"Authorization": f"Bearer {service['token']}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


def _stow_body(datasets, boundary="b0undary", extra: list[bytes] = ()) -> bytes:
    parts = []
    for ds in datasets:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        parts.append(buffer.getvalue())
    parts += list(extra)
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{boundary}--\r\n".encode()


def test_stow_refusals(service, session_factory):
    base, ct = service["base"], service["ct"]
    mr = brain_mr_study()
    wrong_study = httpx.post(f"{base}/dicomweb/studies/{ct.study_instance_uid}", headers=_stow_headers(service),
                             content=_stow_body(mr.series["t2"][:1]))
    assert wrong_study.status_code == 409
    (failed,) = wrong_study.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA900]
    assert failed["00081155"]["Value"] == [mr.series["t2"][0].SOPInstanceUID]

    partial = httpx.post(f"{base}/dicomweb/studies", headers=_stow_headers(service),
                         content=_stow_body(mr.series["t2"][:1], extra=[b"not DICOM at all" * 20]))
    assert partial.status_code == 202
    assert partial.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC210]  # cannot understand

    truncated = httpx.post(f"{base}/dicomweb/studies", headers=_stow_headers(service),
                           content=_stow_body(mr.series["t2"][:1])[:-40])
    assert truncated.status_code == 400 and "cut short" in truncated.json()["detail"]
    json_body = httpx.post(f"{base}/dicomweb/studies", content=b"[]", headers={
        "Authorization": f"Bearer {service['token']}", "Content-Type": "application/dicom+json"})
    assert json_body.status_code == 415
    with session_factory() as session:
        outcomes = session.execute(select(AuditEvent.outcome, AuditEvent.study_uid)
                                   .where(AuditEvent.action == "dicomweb.store").order_by(AuditEvent.id)).all()
    # the cut-short request is audited as a failed store too (nothing of it was stored)
    assert outcomes == [("failed", ct.study_instance_uid), ("success", mr.study_instance_uid), ("failed", "")]


def test_dicomweb_needs_a_token_and_refuses_hostile_input(service):
    base = service["base"]
    for path in ("/dicomweb/studies", "/dicomweb/studies/1.2.3/metadata",
                 "/dicomweb/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5"):
        assert httpx.get(base + path).status_code == 401, path
    refused = httpx.post(base + "/dicomweb/studies", content=_stow_body(brain_mr_study().series["t1"][:1]),
                         headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary'})
    assert refused.status_code == 401
    headers = {"Authorization": f"Bearer {service['token']}"}
    for query in ("StudyInstanceUID=1.2.3'%20OR%201=1", "StudyDate=2026-01-01", "limit=100000",
                  "ModalitiesInStudy=CT'--", "00100030=19700101", "PatientName=" + "x" * 195, "SeriesNumber=one",
                  "SeriesDescription=" + "x" * 65):
        response = httpx.get(f"{base}/dicomweb/series?{query}", headers=headers)
        assert 400 <= response.status_code < 500, (query, response.status_code, response.text)
    for path in ("/dicomweb/studies/..%2F..%2Fetc/series/1.2/instances/1.2.3", "/dicomweb/studies/1.2.3%00/metadata",
                 "/dicomweb/studies/" + "1." * 40 + "1/metadata"):
        response = httpx.get(base + path, headers=headers)
        assert 400 <= response.status_code < 500, (path, response.status_code)


def test_multipart_round_trip_and_malformed_bodies(tmp_path):
    files = []
    for n, content in enumerate([b"first\r\n--not-the-boundary", b"", b"\x00" * 3000]):
        path = tmp_path / f"{n}.bin"
        path.write_bytes(content)
        files.append(FilePart(path, "application/dicom"))
    body = b"".join(encode_parts(files, "bnd"))
    parts = parse_parts(body, "bnd")
    assert [bytes(p.content) for p in parts] == [f.path.read_bytes() for f in files]
    assert {p.content_type for p in parts} == {"application/dicom"}
    with pytest.raises(MultipartError, match="does not start with the boundary"):
        parse_parts(body, "other")
    with pytest.raises(MultipartError, match="cut short"):
        parse_parts(body[:-20], "bnd")
    with pytest.raises(MultipartError, match="boundary parameter"):
        parse_parts(body, "")


def _produce_results(settings, session_factory) -> dict:
    """A draft SR and SEG for the CT study (as the report stage writes them) and the Report row that lists them."""
    case = ct_case(demo=True)
    seg = build_segmentation(case.content.findings, case.uids, now=FIXED_TIME)
    draft = build_draft_report(case.content, case.uids, segmentation=seg, now=FIXED_TIME)
    folder = settings.results_dir / case.study.study_instance_uid / "run-1"
    folder.mkdir(parents=True)
    objects = {}
    for kind, dataset in (("sr", draft), ("seg", seg)):
        dataset.save_as(folder / f"{kind}.dcm", enforce_file_format=True)
        objects[kind] = {"path": str(folder / f"{kind}.dcm"), "sop_instance_uid": dataset.SOPInstanceUID,
                         "sop_class_uid": dataset.SOPClassUID}
    with session_scope(session_factory) as session:
        study = session.scalars(select(Study).where(Study.study_uid == case.study.study_instance_uid)).one()
        run = PipelineRun(study_id=study.id, run_number=1, trigger="complete")
        session.add(run)
        session.flush()
        session.add(Report(study_id=study.id, run_id=run.id, objects=objects))
    return {"sr": draft, "seg": seg, "objects": objects}


def test_the_results_m3edge_made_are_served_beside_the_received_series(service, session_factory):
    client = _client(service)
    ct = service["ct"]
    produced = _produce_results(service["settings"], session_factory)
    sr, seg = produced["sr"], produced["seg"]
    assert sr.StudyInstanceUID == ct.study_instance_uid

    series = client.search_for_series(study_instance_uid=ct.study_instance_uid)
    assert _value(series[0], "00080060") == "CT"  # received series first, then the results
    assert sorted(_value(s, "00080060") for s in series[1:]) == ["SEG", "SR"]
    (study,) = client.search_for_studies(search_filters={"StudyInstanceUID": ct.study_instance_uid})
    assert study["00080061"]["Value"] == ["CT", "SEG", "SR"]
    assert _value(study, "00201206") == 3 and _value(study, "00201208") == len(ct.all_instances) + 2
    (only_sr,) = client.search_for_series(search_filters={"Modality": "SR"})
    assert _value(only_sr, "0020000E") == sr.SeriesInstanceUID
    paged = client.search_for_series(study_instance_uid=ct.study_instance_uid, offset=1, limit=1)
    assert [_value(s, "0020000E") for s in paged] == [_value(series[1], "0020000E")]
    (seg_instance,) = client.search_for_instances(study_instance_uid=ct.study_instance_uid,
                                                  search_filters={"SOPClassUID": str(seg.SOPClassUID)})
    assert _value(seg_instance, "00080018") == seg.SOPInstanceUID

    got = client.retrieve_instance(ct.study_instance_uid, sr.SeriesInstanceUID, sr.SOPInstanceUID)
    assert got == pydicom.dcmread(produced["objects"]["sr"]["path"])
    raw = httpx.get(f"{service['base']}/dicomweb/studies/{ct.study_instance_uid}/series/{seg.SeriesInstanceUID}",
                    headers={"Authorization": f"Bearer {service['token']}"})
    (part,) = parse_parts(raw.content, media_type_parameters(raw.headers["content-type"])[1]["boundary"])
    assert bytes(part.content) == Path(produced["objects"]["seg"]["path"]).read_bytes()
    metadata = client.retrieve_series_metadata(ct.study_instance_uid, seg.SeriesInstanceUID)
    assert [_value(m, "00080016") for m in metadata] == [str(seg.SOPClassUID)]
    assert len(client.retrieve_study(ct.study_instance_uid)) == len(ct.all_instances) + 2
