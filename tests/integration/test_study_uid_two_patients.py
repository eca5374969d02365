"""A whole Study Instance UID reused by a second patient (a misconfigured modality, a bad anonymiser): both series
arrive through the real node by dcmtk's storescu. The study keeps its first patient's context, the reuse is flagged
(uid_collisions kind ``study``: the study's API detail and page, the log with UIDs only, the metric), and the pipeline
never processes the study, so no report mixes the two patients' images."""

from __future__ import annotations

import logging

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from dicom_node.scp import DicomNode
from service.api.metrics import make_registry
from service.catalog import get_study
from service.db.models import Study, StudyStatus, UidCollision, UidKind
from service.db.session import session_scope
from service.dicomweb.qido import QidoLevel, parse_qido, search
from service.dicomweb.wado import stored_files
from service.ingest import DatabaseRecorder
from service.pipeline.ledger import PipelineLedger
from tests.support.dcmtk import storescu
from tests.support.pipeline_study import ct_study
from tests.support.scp_node import node_settings
from tests.support.synthetic_series import write_datasets

FIRST, SECOND = ("UIDREUSE-A", "Alpha^Anna"), ("UIDREUSE-B", "Bravo^Bert")


@pytest.fixture
def reused_study_uid(tmp_path, session_factory, caplog):
    first, second = ct_study(), ct_study()
    series_uid = generate_uid()
    for dataset in second:  # the second patient's series, under the first study's UID
        dataset.StudyInstanceUID = first[0].StudyInstanceUID
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    for datasets, (patient_id, name) in ((first, FIRST), (second, SECOND)):
        for dataset in datasets:
            dataset.PatientID, dataset.PatientName = patient_id, name
    recorder = DatabaseRecorder(session_factory).start()
    settings = node_settings(tmp_path / "home", study_idle_seconds=3600)
    node = DicomNode(settings, recorder)
    node.start()
    try:
        with caplog.at_level(logging.INFO):
            for key, datasets in (("a", first), ("b", second)):
                sent = storescu(node.port, write_datasets(datasets, tmp_path / key))
                assert sent.returncode == 0 and set(sent.responses().values()) == {"Success"}, sent.output
    finally:
        node.stop()
        recorder.close()
    return str(first[0].StudyInstanceUID), caplog.text, settings, first


def test_a_study_uid_with_a_second_patient_is_flagged_and_never_processed(reused_study_uid, session_factory):
    study_uid, log, settings, first = reused_study_uid
    with session_scope(session_factory) as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        assert (study.patient_id, study.patient_name) == FIRST  # the second patient's context never fills it
        flags = session.scalars(select(UidCollision)).all()
        assert [(f.kind, f.uid, f.study_id == f.other_study_id == study.id) for f in flags] == \
            [(UidKind.STUDY, study_uid, True)]
        detail = get_study(session, study_uid)
        notes = detail.uid_collisions
        assert [n.kind for n in notes] == ["study"] and "two patients" in notes[0].describe()
        # the second patient's series is kept (its sender was told success), flagged, and never served
        assert sorted((s.instance_count, s.other_patient_count) for s in detail.series) == [(len(first), 0)] + \
            [(len(first), len(first))]
        assert {f.sop_instance_uid for f in stored_files(session, settings.spool_dir, study_uid)} == \
            {str(d.SOPInstanceUID) for d in first}
        series = search(session, parse_qido([("StudyInstanceUID", study_uid)], QidoLevel.SERIES, limit=10, offset=0),
                        "http://x")
        assert [s["0020000E"]["Value"][0] for s in series] == [str(first[0].SeriesInstanceUID)]
        session.execute(update(Study).where(Study.id == study.id).values(status=StudyStatus.COMPLETE))
    ledger = PipelineLedger(session_factory)
    assert ledger.start_run(study_uid, "complete") is None
    with pytest.raises(ValueError, match="two Patient IDs"):
        ledger.start_run(study_uid, "reprocess")
    with session_scope(session_factory) as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        assert study.status is StudyStatus.FAILED and "two patients under one study UID" in study.error
    assert f"Study Instance UID {study_uid} arrived with a second Patient ID" in log
    for value in (*FIRST, *SECOND, "Alpha", "Bravo"):
        assert value not in log
    metrics = make_registry(session_factory)
    assert metrics.get_sample_value("m3edge_uid_collisions_total", {"kind": "study"}) == 1.0
