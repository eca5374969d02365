"""A real Orthanc (started by the test) stores a generated study into m3edge through its REST API
(``POST /modalities/{name}/store``): the study completes, the hook fires once, and what our spool holds matches what
Orthanc holds, pixel data and UIDs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from sqlalchemy import select

from dicom_node.scp import DicomNode
from service.assembly import build_assembler
from service.config import Settings
from service.db.models import Instance, Series, Study, StudyStatus
from service.db.session import session_scope
from service.ingest import DatabaseRecorder
from tests.conftest import require_tool
from tests.support.dicom_corpus import write_ct_series
from tests.support.orthanc import OrthancServer
from tests.support.polling import wait_for


@pytest.mark.slow
def test_orthanc_stores_a_study_into_m3edge_and_it_completes_once(tmp_path, database_url, session_factory):
    require_tool("Orthanc")
    settings = Settings(home=tmp_path / "home", database_url=database_url, dicom_port=0,
                        study_idle_seconds=60, study_release_grace_seconds=0.5)
    hook_calls: list[str] = []
    recorder = DatabaseRecorder(session_factory).start()
    node = DicomNode(settings, recorder)
    assembler = build_assembler(settings, session_factory, hook_calls.append)
    first = write_ct_series(tmp_path / "s1", 4, rows=64, columns=64, series_number=1)
    second = write_ct_series(tmp_path / "s2", 3, rows=64, columns=64, series_number=2, study_uid=first.study_uid)
    node.start()
    assembler.start()
    try:
        with OrthancServer(tmp_path / "orthanc") as orthanc:
            orthanc.add_modality("m3edge", settings.dicom_ae_title, "127.0.0.1", node.port)
            for path in [*first.paths, *second.paths]:
                orthanc.upload(path)
            [study_id] = orthanc.study_ids()
            orthanc.store_to_modality("m3edge", [study_id])

            def complete() -> Study | None:
                with session_scope(session_factory) as session:
                    study = session.scalar(select(Study).where(Study.study_uid == first.study_uid))
                # the hook runs just after the completion is committed
                return study if study is not None and study.status == StudyStatus.COMPLETE and hook_calls else None

            study = wait_for(complete, timeout=60, interval=0.05, message="the study Orthanc sent never completed")
            assert assembler.sweep() == []
            assert hook_calls == [first.study_uid]
            assert (study.completion_reason, study.completion_count, study.calling_ae) == ("released", 1, "ORTHANC")

            with session_scope(session_factory) as session:
                rows = session.execute(
                    select(Instance.sop_instance_uid, Instance.path, Series.series_uid)
                    .join(Series).join(Study).where(Study.study_uid == first.study_uid)
                ).all()
            assert len(rows) == 7
            assert {series_uid for _, _, series_uid in rows} == {first.series_uid, second.series_uid}
            for sop_uid, relative_path, series_uid in rows:
                ours = dcmread(Path(settings.spool_dir) / relative_path)
                theirs = dcmread(DicomBytesIO(orthanc.instance_file(orthanc.lookup_instance(sop_uid))))
                assert (ours.SOPInstanceUID, ours.SeriesInstanceUID, ours.StudyInstanceUID) == (
                    theirs.SOPInstanceUID, series_uid, first.study_uid)
                assert ours.SOPClassUID == theirs.SOPClassUID
                assert ours.PixelData == theirs.PixelData
    finally:
        node.stop()
        assembler.stop()
        recorder.close()
