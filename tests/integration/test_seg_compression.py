"""SEG frames compressed by default (JPEG 2000 Lossless, the one compressed syntax highdicom allows for BINARY), read by
the peers a site has: dcmtk (dcmdump parses the encapsulated frames), dicom3tools (dciodvfy: no error), Orthanc (stores
it, keeps it byte for byte, and answers its frames), highdicom (decodes the same masks as the uncompressed SEG).

The source is pydicom's real Enhanced CT (two 512 x 512 frames); ``SEG_COMPRESSION=none`` writes the uncompressed SEG
old viewers need, and frames under 32 pixels on a side are always written natively.
"""

from __future__ import annotations

import os
import subprocess
from io import BytesIO

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from dicom_node.results import SegCompression, build_segmentation
from tests.conftest import require_tool
from tests.support.orthanc import OrthancServer
from tests.support.result_cases import FIXED_TIME, ct_case, enhanced_ct_case

_ENV = {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture(scope="module")
def segs(tmp_path_factory) -> dict:
    case = enhanced_ct_case()
    folder = tmp_path_factory.mktemp("segs")
    written = {}
    for compression in SegCompression:
        seg = build_segmentation(case.content.findings, case.uids, now=FIXED_TIME, compression=compression)
        path = folder / f"seg-{compression.value}.dcm"
        seg.save_as(path, enforce_file_format=True)
        written[compression] = path
    return {"case": case, "paths": written}


def _masks(path) -> np.ndarray:
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(path))
    source = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    return seg.get_pixels_by_source_frame(source, [1, 2], combine_segments=False, skip_overlap_checks=True)


def test_the_default_seg_is_jpeg_2000_lossless_smaller_and_holds_the_same_masks(segs):
    compressed, plain = segs["paths"][SegCompression.JPEG2000_LOSSLESS], segs["paths"][SegCompression.NONE]
    assert pydicom.dcmread(compressed, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert pydicom.dcmread(plain, stop_before_pixels=True).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert compressed.stat().st_size * 5 < plain.stat().st_size
    np.testing.assert_array_equal(_masks(compressed), _masks(plain))


def test_frames_too_small_for_jpeg_2000_are_written_natively():
    case = ct_case()  # 24 x 20 frames
    seg = build_segmentation(case.content.findings, case.uids, now=FIXED_TIME)
    assert seg.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_dcmtk_and_dicom3tools_read_both(segs):
    for compression, path in segs["paths"].items():
        dump = subprocess.run([require_tool("dcmdump"), "-dc", str(path)], capture_output=True, text=True,
                              timeout=60, env=_ENV)
        assert dump.returncode == 0 and "E:" not in dump.stderr, dump.stderr
        if compression is SegCompression.JPEG2000_LOSSLESS:
            assert "=JPEG2000LosslessOnly" in dump.stdout and "(fffe,e000) pi" in dump.stdout  # encapsulated frames
        checked = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{compression.value}: {errors}"


def test_orthanc_stores_the_compressed_seg_and_answers_its_frames(segs, tmp_path):
    require_tool("Orthanc")
    path = segs["paths"][SegCompression.JPEG2000_LOSSLESS]
    with OrthancServer(tmp_path / "orthanc") as orthanc:
        instance = orthanc.upload(path)
        assert orthanc.instance_file(instance) == path.read_bytes()
        tags = orthanc._call("GET", f"/instances/{instance}/metadata/TransferSyntax").text
        assert tags == JPEG2000Lossless
        frames = int(pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames)
        raw = orthanc._call("GET", f"/instances/{instance}/frames/{frames - 1}/raw")
        assert raw.status_code == 200 and raw.content[:4] == b"\xff\x4f\xff\x51"  # a JPEG 2000 codestream
        seg = pydicom.dcmread(BytesIO(orthanc.instance_file(instance)))
        assert seg.SOPInstanceUID == pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID


# -- a peer that takes no JPEG 2000 gets the SEG decompressed: Query/Retrieve (getscu, movescu) and delivery ----------

@pytest.fixture
def qr_node_with_compressed_seg(tmp_path, session_factory, segs):
    """The node serving Q/R over one report whose SEG is JPEG 2000; a dcmtk storescp (uncompressed only, its default)
    and one accepting every syntax (+xa) as move destinations."""
    from dicom_node.scp import DicomNode
    from service.db.models import PipelineRun, Report, Study, StudyStatus
    from service.db.session import session_scope
    from service.dicomweb.query_retrieve import build_query_retrieve
    from service.ingest import DatabaseRecorder
    from tests.support.dcmtk import dcmtk_env
    from tests.support.ports import free_port
    from tests.support.scp_node import node_settings

    peers, processes = {}, []
    for name, options in (("PLAIN", []), ("ANY", ["+xa"])):
        port, folder = free_port(), tmp_path / name
        folder.mkdir()
        processes.append(subprocess.Popen([require_tool("storescp"), *options, "-aet", name, "-od", str(folder),
                                           str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                          env=dcmtk_env()))
        peers[name] = (port, folder)
    settings = node_settings(tmp_path / "home", dicom_allowed_aes="GETSCU,MOVESCU",
                             destinations=",".join(f"{n}@127.0.0.1:{p}" for n, (p, _) in peers.items()))
    seg_path = settings.results_dir / "run-1" / "seg.dcm"
    seg_path.parent.mkdir(parents=True)
    seg_path.write_bytes(segs["paths"][SegCompression.JPEG2000_LOSSLESS].read_bytes())
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    with session_scope(session_factory) as session:
        study = Study(study_uid=str(seg.StudyInstanceUID), status=StudyStatus.DONE, modalities="CT")
        session.add(study)
        session.flush()
        run = PipelineRun(study_id=study.id, run_number=1, trigger="complete")
        session.add(run)
        session.flush()
        session.add(Report(study_id=study.id, run_id=run.id, objects={"seg": {
            "path": str(seg_path), "sop_instance_uid": str(seg.SOPInstanceUID), "sop_class_uid": str(seg.SOPClassUID)}}))
    recorder = DatabaseRecorder(session_factory).start()
    node = DicomNode(settings, recorder, query_retrieve=build_query_retrieve(settings, session_factory))
    node.start()
    try:
        yield node, str(seg.StudyInstanceUID), peers
    finally:
        node.stop()
        recorder.close()
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


def _retrieve(tool: str, port: int, study_uid: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool(tool), "-S", "-aet", tool.upper(), "-aec", "M3EDGE", *options, "-k",
                           "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60, env=_ENV)


def _one_file(folder):
    from tests.support.polling import wait_for

    files = wait_for(lambda: [p for p in folder.iterdir() if not p.name.startswith(".")], timeout=30,
                     message=f"nothing arrived in {folder}")
    assert len(files) == 1, files
    return pydicom.dcmread(files[0])


def test_retrieving_peers_get_the_seg_as_they_can_take_it(qr_node_with_compressed_seg, segs, tmp_path):
    node, study_uid, peers = qr_node_with_compressed_seg
    expected = _masks(segs["paths"][SegCompression.NONE])
    folder = tmp_path / "got"
    folder.mkdir()
    got = _retrieve("getscu", node.port, study_uid, "-od", str(folder))  # getscu takes no JPEG 2000 by default
    assert got.returncode == 0 and "Failed" not in got.stdout + got.stderr, got.stdout + got.stderr
    received = _one_file(folder)
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(_masks(received.filename), expected)
    for name, syntax in (("PLAIN", ExplicitVRLittleEndian), ("ANY", JPEG2000Lossless)):
        moved = _retrieve("movescu", node.port, study_uid, "-aem", name)
        assert moved.returncode == 0 and "Failed" not in moved.stdout + moved.stderr, moved.stdout + moved.stderr
        received = _one_file(peers[name][1])
        assert received.file_meta.TransferSyntaxUID == syntax
        np.testing.assert_array_equal(_masks(received.filename), expected)


def test_delivery_decompresses_the_seg_only_for_a_destination_that_takes_no_jpeg_2000(qr_node_with_compressed_seg,
                                                                                       segs):
    from dicom_node.network import DicomAddress
    from dicom_node.scu import AssociationRejected, RetryPolicy, StorageSCU

    _, _, peers = qr_node_with_compressed_seg
    path = segs["paths"][SegCompression.JPEG2000_LOSSLESS]
    plain = DicomAddress.parse(f"PLAIN@127.0.0.1:{peers['PLAIN'][0]}")
    with pytest.raises(AssociationRejected, match="accepted none of the presentation contexts offered"):
        StorageSCU("M3EDGE", retry=RetryPolicy(attempts=1)).send(plain, [path])  # as stored only: refused
    report = StorageSCU("M3EDGE", retry=RetryPolicy(attempts=1), decompress_when_refused=True).send(plain, [path])
    assert report.all_delivered, report.outcomes[0].error
    received = _one_file(peers["PLAIN"][1])
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(_masks(received.filename), _masks(segs["paths"][SegCompression.NONE]))
    anywhere = DicomAddress.parse(f"ANY@127.0.0.1:{peers['ANY'][0]}")
    assert StorageSCU("M3EDGE", decompress_when_refused=True).send(anywhere, [path]).all_delivered
    assert _one_file(peers["ANY"][1]).file_meta.TransferSyntaxUID == JPEG2000Lossless  # as stored where it can
