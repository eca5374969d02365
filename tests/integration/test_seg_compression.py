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
