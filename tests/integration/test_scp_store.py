"""The node receiving from real peers: dcmtk's echoscu/storescu (every transfer syntax, several associations, a long
CT series, pydicom's whole test corpus) and pynetdicom's SCU streaming files byte for byte."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEGBaseline8Bit
from pynetdicom import AE, _config
from pynetdicom.status import code_to_category
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage, Verification
from sqlalchemy import text

from dicom_node.intake.statuses import SUCCESS, WARNING_CONFLICTING_DUPLICATE
from dicom_node.scp import fastpath
from dicom_node.scp.handlers import handle_store  # noqa: F401 - imported so a rename breaks this test module loudly
from tests.support.dcmtk import dcmtk_env, echoscu, storescu, storescu_command
from tests.support.dicom_corpus import (
    FAKE_PATIENT,
    TRANSFER_SYNTAXES,
    dataset_bytes,
    encode_as,
    write_ct_series,
)
from tests.support.polling import wait_for
from tests.support.scp_node import instances_in_db, running_node, study_row


@pytest.fixture(scope="module")
def ct_source(tmp_path_factory) -> Path:
    return write_ct_series(tmp_path_factory.mktemp("ct-source"), 2, seed=7).paths[0]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, ct_source) -> dict[str, Path]:
    """One instance per transfer syntax (8-bit RGB for JPEG baseline, which cannot hold 12-bit CT)."""
    folder = tmp_path_factory.mktemp("encoded")
    rgb = Path(get_testdata_file("SC_rgb_small_odd.dcm"))
    return {
        ts: encode_as(rgb if ts == JPEGBaseline8Bit else ct_source, ts, folder / f"{ts}.dcm")
        for ts in TRANSFER_SYNTAXES
    }


@pytest.fixture(params=[True, False], ids=["fast-path-on", "fast-path-off"])
def fast_path(request):
    """DICOM_FAST_PATH both ways; yields the setting and checks afterwards that only 'on' paced associations."""
    paced = fastpath.associations_paced()
    yield request.param
    assert (fastpath.associations_paced() > paced) is request.param


def _received(node, relative_path: str) -> Path:
    return node.spool.path_of(relative_path)


def test_echoscu_gets_a_verification_answer(tmp_path, session_factory):
    with running_node(tmp_path, session_factory) as node:
        result = echoscu(node.port)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("transfer_syntax", list(TRANSFER_SYNTAXES), ids=lambda ts: ts.name)
def test_each_transfer_syntax_is_stored_as_received(tmp_path, session_factory, encoded, transfer_syntax):
    source = encoded[transfer_syntax]
    with running_node(tmp_path, session_factory) as node:
        result = storescu(node.port, [source], proposal=transfer_syntax)
        assert result.returncode == 0, result.output
        assert result.responses() == {source: "Success"}
        [(instance, series, study)] = instances_in_db(session_factory)
        stored = dcmread(_received(node, instance.path))
    original = dcmread(source)
    assert instance.transfer_syntax_uid == transfer_syntax
    assert stored.file_meta.TransferSyntaxUID == transfer_syntax
    assert stored.PixelData == original.PixelData  # compressed fragments or native pixels, byte for byte
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        assert stored[keyword].value == original[keyword].value
    assert (study.study_uid, series.series_uid, instance.sop_instance_uid) == (
        original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID,
    )
    assert instance.size_bytes == _received(node, instance.path).stat().st_size


def test_streamed_data_sets_are_stored_byte_for_byte(tmp_path, session_factory, encoded, monkeypatch, fast_path):
    """pynetdicom's SCU streams each file's data set unchanged: the stored file holds exactly those bytes."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    sources = [p for p in encoded.values()] + [Path(get_testdata_file("MR_small.dcm"))]
    with running_node(tmp_path, session_factory, dicom_fast_path=fast_path) as node:
        ae = AE(ae_title="STREAMER")
        for source in sources:
            ds = dcmread(source, stop_before_pixels=True)
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="M3EDGE")
        assert assoc.is_established
        statuses = [assoc.send_c_store(source).Status for source in sources]
        assoc.release()
        rows = instances_in_db(session_factory)
        stored = {dataset_bytes(_received(node, instance.path)) for instance, _, _ in rows}
    # The CT copies share one SOP Instance UID: the first is stored, the others kept as flagged conflicts (B000H).
    seen: set[str] = set()
    expected = []
    for source in sources:
        uid = dcmread(source, stop_before_pixels=True).SOPInstanceUID
        expected.append(WARNING_CONFLICTING_DUPLICATE if uid in seen else SUCCESS)
        seen.add(uid)
    assert statuses == expected
    assert len(rows) == len(sources)
    for source in sources:
        assert dataset_bytes(source) in stored, source.name


def test_a_study_sent_over_one_association_arrives_whole(tmp_path, session_factory, fast_path):
    """How a PACS sends: one association, each C-STORE waiting for the previous response."""
    series = write_ct_series(tmp_path / "ct", 40, rows=128, columns=128, seed=3)
    with running_node(tmp_path / "home", session_factory, dicom_fast_path=fast_path) as node:
        result = storescu(node.port, series.paths)
        assert result.returncode == 0, result.output[-2000:]
        assert set(result.responses().values()) == {"Success"} and len(result.responses()) == 40
        rows = instances_in_db(session_factory)
    assert sorted(i.sop_instance_uid for i, _, _ in rows) == sorted(
        dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.paths)


def test_several_associations_at_once_all_arrive(tmp_path, session_factory, fast_path):
    series = [write_ct_series(tmp_path / f"s{i}", 12, rows=128, columns=128, seed=i) for i in range(4)]
    with running_node(tmp_path / "home", session_factory, dicom_fast_path=fast_path) as node:
        senders = [
            subprocess.Popen(storescu_command(node.port, s.paths, calling_ae=f"MODALITY{i}"), env=dcmtk_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i, s in enumerate(series)
        ]
        assert [sender.wait(timeout=120) for sender in senders] == [0, 0, 0, 0]
        rows = instances_in_db(session_factory)
        assert {i.sop_instance_uid for i, _, _ in rows} == {
            dcmread(p, stop_before_pixels=True).SOPInstanceUID for s in series for p in s.paths
        }
        assert {study.calling_ae for _, _, study in rows} <= {f"MODALITY{i}" for i in range(4)}
        for instance, _, _ in rows:
            assert instance.calling_ae.startswith("MODALITY")


@pytest.mark.slow
def test_a_multi_hundred_slice_ct_series_arrives_whole_and_unchanged(tmp_path, session_factory):
    series = write_ct_series(tmp_path / "ct", 320, seed=11)
    with running_node(tmp_path / "home", session_factory) as node:
        result = storescu(node.port, series.paths, timeout=300)
        assert result.returncode == 0, result.output[-2000:]
        rows = instances_in_db(session_factory)
        assert len(rows) == 320
        by_uid = {instance.sop_instance_uid: instance for instance, _, _ in rows}
        for path in series.paths:
            source = dcmread(path)
            stored = dcmread(_received(node, by_uid[source.SOPInstanceUID].path))
            assert stored.PixelData == source.PixelData
            assert stored.ImagePositionPatient == source.ImagePositionPatient
        study = study_row(session_factory, series.study_uid)
    assert study.modalities == "CT" and study.status.value == "receiving"
    assert study.study_description == "CT CHEST WITH CONTRAST" and study.study_date == "20240312"


def test_an_identical_resend_is_one_instance_and_different_content_is_kept_and_flagged(tmp_path, session_factory):
    """A conflicting duplicate answers PS3.4's B000 warning with an Error Comment, to dcmtk and to pynetdicom alike:
    both know it as a warning (a status an SCU does not know may make it resend forever), and both copies are kept."""
    series = write_ct_series(tmp_path / "ct", 3, rows=64, columns=64, seed=3)
    changed, changed_again = tmp_path / "changed.dcm", tmp_path / "changed-again.dcm"
    ds = dcmread(series.paths[0])
    ds.SeriesDescription = "EDITED AFTER SENDING"
    ds.save_as(changed, enforce_file_format=True)
    ds.SeriesDescription = "EDITED TWICE"
    ds.save_as(changed_again, enforce_file_format=True)
    with running_node(tmp_path / "home", session_factory) as node:
        first = storescu(node.port, series.paths)
        again = storescu(node.port, series.paths)
        conflict = storescu(node.port, [changed], extra=["-d"])
        ae = AE(ae_title="SECONDCOPY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="M3EDGE")
        assert assoc.is_established
        answer = assoc.send_c_store(dcmread(changed_again))
        assoc.release()
        rows = instances_in_db(session_factory)
        original_path = _received(node, next(i.path for i, _, _ in rows if not i.conflict and i.sop_instance_uid == ds.SOPInstanceUID))
        original_bytes_kept = dataset_bytes(original_path) == dataset_bytes(series.paths[0])
        conflicting = sorted((i for i, _, _ in rows if i.conflict), key=lambda i: i.id)
        conflict_bytes = [dataset_bytes(_received(node, i.path)) for i in conflicting]
    assert set(first.responses().values()) == {"Success"} and set(again.responses().values()) == {"Success"}
    assert conflict.returncode == 0
    assert "DIMSE Status                  : 0xb000: Warning: Coercion of Data Elements" in conflict.output  # (-d)
    assert "[SOP Instance UID held with other content: kept both]" in conflict.output  # its Error Comment
    assert answer.Status == WARNING_CONFLICTING_DUPLICATE == 0xB000
    assert code_to_category(answer.Status) == "Warning"
    assert answer.ErrorComment == "SOP Instance UID held with other content: kept both"
    assert len(rows) == 5
    assert [i.sop_instance_uid for i in conflicting] == [ds.SOPInstanceUID] * 2
    assert original_bytes_kept
    assert conflict_bytes == [dataset_bytes(changed), dataset_bytes(changed_again)]


def test_release_is_recorded_per_study_and_patient_context_is_kept_only_where_it_belongs(tmp_path, session_factory,
                                                                                         db_engine, caplog):
    series = write_ct_series(tmp_path / "ct", 3, rows=64, columns=64, seed=5)
    with running_node(tmp_path / "home", session_factory) as node:
        assert storescu(node.port, series.paths).returncode == 0
        released = wait_for(lambda: (row := study_row(session_factory, series.study_uid)) and row.last_released_at,
                            timeout=10, message="the association's release was never recorded")
    assert released is not None
    kept = ("patient_name", "patient_id", "accession_number")  # the patient context reviewers see (audited)
    with db_engine.connect() as connection:
        dump = " ".join(
            str(value)
            for table in ("studies", "series", "instances")
            for row in connection.execute(text(f"SELECT * FROM {table}"))
            for key, value in row._mapping.items() if not (table == "studies" and key in kept)
        )
        context = connection.execute(text("SELECT patient_name, patient_id, accession_number FROM studies")).one()
    assert series.study_uid in dump
    assert tuple(context) == (FAKE_PATIENT["PatientName"], FAKE_PATIENT["PatientID"], FAKE_PATIENT["AccessionNumber"])
    for secret in FAKE_PATIENT.values():
        assert secret not in dump  # never elsewhere; the birth date nowhere
        assert secret not in caplog.text


def test_an_association_proposing_only_non_storage_classes_gets_no_storage_context(tmp_path, session_factory):
    with running_node(tmp_path, session_factory) as node:
        ae = AE(ae_title="WORKLIST")
        ae.add_requested_context("1.2.840.10008.5.1.4.31")  # Modality Worklist FIND: not offered by the node
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="M3EDGE")
        assert assoc.is_established
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        with pytest.raises(ValueError, match="No presentation context"):
            assoc.send_c_store(dcmread(get_testdata_file("CT_small.dcm")))
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    assert accepted == {Verification}
    assert {CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage}.isdisjoint(accepted)


@pytest.mark.slow
def test_several_receiving_processes_share_the_port_and_record_through_the_parent(tmp_path, session_factory):
    series = [write_ct_series(tmp_path / f"s{i}", 8, rows=64, columns=64, seed=40 + i) for i in range(4)]
    with running_node(tmp_path / "home", session_factory, dicom_receivers=2) as node:
        senders = [
            subprocess.Popen(storescu_command(node.port, s.paths), env=dcmtk_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
            for s in series
        ]
        assert [sender.wait(timeout=120) for sender in senders] == [0, 0, 0, 0]
        assert echoscu(node.port).returncode == 0
        # each receiving process files its journal in the background: the rows follow the acknowledgements
        def all_recorded() -> list:
            found = instances_in_db(session_factory)
            return found if len(found) >= 32 else []

        rows = wait_for(all_recorded, timeout=60, message="not every acknowledged instance was recorded")
        for instance, _, _ in rows:
            assert _received(node, instance.path).stat().st_size == instance.size_bytes
        released = wait_for(
            lambda: all((row := study_row(session_factory, s.study_uid)) and row.last_released_at for s in series),
            timeout=10, message="the releases seen by the receiving processes were not recorded",
        )
    assert released
    assert len(rows) == 32


@pytest.mark.slow
def test_receiving_processes_ship_one_study_over_four_associations_to_the_node_which_files_it(
    tmp_path, session_factory, database_url
):
    """DICOM_RECEIVERS=2 as ``m3edge scp`` runs it: the receiving processes journal, the node's own process files and
    records. Four senders send the series of ONE study at once, through both processes; one study row, its senders
    counted, every instance once, and no segment left in the journal."""
    from dicom_node.intake.journal import JOURNAL_DIR
    from dicom_node.scp import DicomNode
    from service.ingest import DatabaseRecorder
    from tests.support.scp_node import node_settings

    study_uid = "1.2.826.0.1.3680043.8.498.77"
    series = [write_ct_series(tmp_path / f"s{i}", 6, rows=64, columns=64, seed=60 + i, study_uid=study_uid,
                              series_number=i + 1) for i in range(4)]
    parent = DatabaseRecorder(session_factory).start_for_node()
    settings = node_settings(tmp_path / "home", dicom_receivers=2, database_url=database_url)
    node = DicomNode(settings, parent)
    node.start()
    try:
        senders = [subprocess.Popen(storescu_command(node.port, s.paths), env=dcmtk_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for s in series]
        assert [sender.wait(timeout=120) for sender in senders] == [0, 0, 0, 0]
        study = wait_for(lambda: (row := study_row(session_factory, study_uid)) and row.open_associations == 0
                         and row.last_released_at and row, timeout=10, message="the senders' ends were not recorded")
    finally:
        node.stop()
        parent.close()
    assert parent.commits > 0  # recorded by the node's own process
    assert sorted((settings.spool_dir / JOURNAL_DIR).iterdir()) == []  # every segment filed, then deleted
    rows = instances_in_db(session_factory)
    assert sorted(instance.sop_instance_uid for instance, _, _ in rows) == sorted(
        dcmread(path).SOPInstanceUID for s in series for path in s.paths)
    assert {row[2].study_uid for row in rows} == {study.study_uid} and len({row[1].id for row in rows}) == 4


@pytest.mark.parametrize("retired", ["1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3",
                                     "1.2.840.10008.5.1.4.1.1.5"], ids=["US", "US-multiframe", "NM"])
def test_retired_storage_classes_real_equipment_still_sends_are_accepted_and_stored(tmp_path, session_factory, retired):
    """The old Ultrasound (Multi-frame) and Nuclear Medicine Image Storage classes: PS3.4 retired them, carts still
    send them; the node stores them (routing decides what an expert reads)."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = retired
    ds.file_meta.MediaStorageSOPClassUID = retired
    path = tmp_path / "retired.dcm"
    ds.save_as(path, enforce_file_format=True)
    with running_node(tmp_path / "home", session_factory) as node:
        result = storescu(node.port, [path], proposal="1.2.840.10008.1.2.1", extra=["-R"])
        rows = instances_in_db(session_factory)
    assert result.responses() == {path: "Success"}, result.output[-2000:]
    assert [(i.sop_class_uid, i.sop_instance_uid) for i, _, _ in rows] == [(retired, ds.SOPInstanceUID)]
