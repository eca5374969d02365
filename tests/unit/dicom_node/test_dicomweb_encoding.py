"""dicom_node.dicomweb: an instance's DICOM JSON with BulkDataURIs (bulk values never inline, sequences' bulk left
out, implicit VR pixel data found), frames cut from native and single-bit pixel data, frame lists; and the service's
Accept negotiation for frames (service.dicomweb.wado.frame_content_type)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.dicomweb import FrameError, instance_metadata, parse_frame_list, read_frames, with_bulk_data_base
from service.dicomweb.wado import NotAcceptable, frame_content_type

OCTETS = "application/octet-stream"


def _image(path, syntax=ExplicitVRLittleEndian, frames: int = 1, bits: int = 16) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.3.4"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.1"
    ds.PatientName = "Doe^Jane"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 4, 6, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.IconImageSequence = Sequence([Dataset()])
    ds.IconImageSequence[0].PixelData = b"\x01" * 2048  # bulk inside a sequence: left out
    ds.IconImageSequence[0].Rows = 32
    ds.IconImageSequence[0].BitsAllocated = 8
    if bits == 1:
        masks = np.random.default_rng(1).integers(0, 2, (frames, 4, 6)).astype(np.uint8)
        ds.PixelData = np.packbits(masks.ravel(), bitorder="little").tobytes()
    else:
        values = np.arange(frames * 24, dtype=">u2" if syntax == ExplicitVRBigEndian else "<u2")
        ds.PixelData = values.tobytes()
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian,
               little_endian=syntax != ExplicitVRBigEndian)
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_metadata_links_pixel_data_and_leaves_nested_bulk_out(tmp_path, syntax):
    path = tmp_path / "ct.dcm"
    _image(path, syntax)
    series_url = "https://h/dicomweb/studies/1.2.3/series/1.2.3.1"
    document = json.loads(with_bulk_data_base(instance_metadata(path), series_url))
    assert document["7FE00010"] == {"vr": "OW",
                                    "BulkDataURI": "https://h/dicomweb/studies/1.2.3/series/1.2.3.1/instances/1.2.3.4/"
                                                   "bulkdata/7FE00010"}
    assert document["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert set(document["00880200"]["Value"][0]) == {"00280010", "00280100"}  # the icon kept, its pixels not
    assert list(document) == sorted(document)


def test_native_and_single_bit_frames_are_cut_per_frame(tmp_path):
    _image(tmp_path / "multi.dcm", frames=3)
    frames = read_frames(tmp_path / "multi.dcm", [3, 1])
    assert frames.transfer_syntax_uid == ExplicitVRLittleEndian and not frames.compressed
    assert [np.frombuffer(f, "<u2")[0] for f in frames.parts] == [48, 0]

    seg = _image(tmp_path / "seg.dcm", frames=3, bits=1)
    masks = np.unpackbits(np.frombuffer(seg.PixelData, np.uint8), bitorder="little")[:72].reshape(3, 24)
    (second,) = read_frames(tmp_path / "seg.dcm", [2]).parts
    assert np.array_equal(np.unpackbits(np.frombuffer(second, np.uint8), bitorder="little")[:24], masks[1])

    _image(tmp_path / "big.dcm", ExplicitVRBigEndian, frames=2)
    (frame,) = read_frames(tmp_path / "big.dcm", [2]).parts
    assert np.frombuffer(frame, "<u2")[0] == 24  # swapped to little endian

    with pytest.raises(FrameError, match="there is no frame 4") as missing:
        read_frames(tmp_path / "multi.dcm", [4])
    assert missing.value.status == 404


def test_frame_lists_are_bounded_and_checked():
    assert parse_frame_list("1,2,10") == [1, 2, 10]
    for bad in ("0", "1,,2", "a", "1," * 5000 + "1", "9" * 12):
        with pytest.raises(FrameError) as refused:
            parse_frame_list(bad)
        assert refused.value.status == 400


def test_frames_go_as_stored_or_not_at_all():
    j2k = "1.2.840.10008.1.2.4.90"
    native = f"{OCTETS}; transfer-syntax={ExplicitVRLittleEndian}"
    assert frame_content_type("", ExplicitVRLittleEndian, OCTETS) == native
    ohif = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    assert frame_content_type(ohif, j2k, "image/jp2") == f"{OCTETS}; transfer-syntax={j2k}"
    assert frame_content_type('multipart/related; type="image/jp2"', j2k, "image/jp2") == f"image/jp2; transfer-syntax={j2k}"
    assert frame_content_type('multipart/related; type="application/octet-stream"', ExplicitVRLittleEndian, OCTETS)
    with pytest.raises(NotAcceptable, match="never transcoded"):
        frame_content_type('multipart/related; type="application/octet-stream"', j2k, "image/jp2")  # would need decoding
    with pytest.raises(NotAcceptable):
        frame_content_type('multipart/related; type="image/jpeg"', ExplicitVRLittleEndian, OCTETS)
