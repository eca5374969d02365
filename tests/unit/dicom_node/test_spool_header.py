"""What the node reads from a received data set before spooling it: the strict walker against pydicom."""

import os
import struct

import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.scp.header import (
    MissingAttribute,
    UnreadableDataset,
    _read_with_pydicom,
    encode_file_meta,
    read_instance_header,
)
from dicom_node.uids import InvalidUid
from tests.support.dicom_corpus import dataset_bytes, pydicom_test_files


def test_file_meta_is_a_valid_part_10_header():
    meta = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", ExplicitVRLittleEndian, "CT01")
    ds = dcmread(__import__("io").BytesIO(meta + b"\x08\x00\x18\x00UI\x08\x001.2.3.45"))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.45"
    assert ds.file_meta.SourceApplicationEntityTitle == "CT01"
    assert ds.SOPInstanceUID == "1.2.3.45"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_walker_reads_what_pydicom_reads_for_every_corpus_file():
    files = pydicom_test_files()
    assert len(files) > 100
    for path in files:
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        meta = encode_file_meta("1.2", "1.2", syntax, "")
        data = dataset_bytes(path)
        assert read_instance_header(meta, data, syntax) == _read_with_pydicom(meta, data), path.name


def _ui(element: int, value: str) -> bytes:
    raw = value.encode() + (b"\x00" if len(value) % 2 else b"")
    return struct.pack("<HH2sH", 0x0008 if element < 0x100 else 0x0020, element & 0xFF, b"UI", len(raw)) + raw


@pytest.mark.parametrize(
    "data, syntax, error",
    [
        (os.urandom(256), ExplicitVRLittleEndian, UnreadableDataset),
        (b"\x00" * 64, ImplicitVRLittleEndian, UnreadableDataset),
        (b"not deflate at all", DeflatedExplicitVRLittleEndian, UnreadableDataset),
        (_ui(0x18, "1.2.3") + _ui(0x10D, "1.2")[:-2], ExplicitVRLittleEndian, UnreadableDataset),
        (_ui(0x18, "1.2.3") + _ui(0x10E, "1.2"), ExplicitVRLittleEndian, MissingAttribute),
        (_ui(0x18, "1.2.3") + _ui(0x10D, "../..") + _ui(0x10E, "1.2"), ExplicitVRLittleEndian, InvalidUid),
    ],
    ids=["random", "zeros", "bad-deflate", "truncated", "no-study", "crafted-study"],
)
def test_malformed_data_sets_raise_typed_errors(data, syntax, error):
    with pytest.raises(error):
        read_instance_header(encode_file_meta("1.2", "1.2", syntax, ""), data, syntax)
