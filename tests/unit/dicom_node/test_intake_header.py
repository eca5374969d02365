"""What the intake reads from a received data set before spooling it: the strict walker against pydicom, the File
Meta it writes and reads, and deflated data sets inflated within their limits."""

import io
import os
import struct
import zlib

import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.intake.deflate import check_inflated_size, inflated_prefix
from dicom_node.intake.header import (
    MissingAttribute,
    UnreadableDataset,
    _header_from,
    _read_with_pydicom,
    encode_file_meta,
    read_file_meta,
    read_instance_header,
)
from dicom_node.intake.limits import InstanceTooLarge
from dicom_node.uids import InvalidUid
from tests.support.dicom_corpus import dataset_bytes, pydicom_test_files


def test_file_meta_is_a_valid_part_10_header_and_reads_back():
    meta = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", ExplicitVRLittleEndian, "CT01")
    ds = dcmread(io.BytesIO(meta + b"\x08\x00\x18\x00UI\x08\x001.2.3.45"))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.45"
    assert ds.file_meta.SourceApplicationEntityTitle == "CT01"
    assert ds.SOPInstanceUID == "1.2.3.45"
    read = read_file_meta(meta + b"\x08\x00")
    assert (read.sop_class_uid, read.sop_instance_uid, read.transfer_syntax_uid) == (
        "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", ExplicitVRLittleEndian)
    assert read.data_set_offset == len(meta)


def test_a_file_meta_without_preamble_is_read_and_a_file_without_one_is_refused():
    meta = encode_file_meta("1.2", "1.2.3", ImplicitVRLittleEndian, "")[132:]
    assert read_file_meta(meta).transfer_syntax_uid == ImplicitVRLittleEndian
    with pytest.raises(UnreadableDataset, match="no File Meta group"):
        read_file_meta(b"\x08\x00\x18\x00UI\x02\x001\x00")
    with pytest.raises(UnreadableDataset, match="runs past the end|ends inside an element header"):
        read_file_meta(meta[:40])


def _region(path) -> tuple[bytes, str]:
    syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    data = dataset_bytes(path)
    if syntax == DeflatedExplicitVRLittleEndian:
        return inflated_prefix([data], 16 << 20), syntax
    return data, syntax


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_walker_reads_what_pydicom_reads_for_every_corpus_file():
    files = pydicom_test_files()
    assert len(files) > 100
    for path in files:
        region, syntax = _region(path)
        implicit = syntax == ImplicitVRLittleEndian
        little = syntax != "1.2.840.10008.1.2.2"
        by_pydicom = _header_from(_read_with_pydicom(region, implicit=implicit, little_endian=little))
        assert read_instance_header(region, syntax) == by_pydicom, path.name


def _ui(element: int, value: str) -> bytes:
    raw = value.encode() + (b"\x00" if len(value) % 2 else b"")
    return struct.pack("<HH2sH", 0x0008 if element < 0x100 else 0x0020, element & 0xFF, b"UI", len(raw)) + raw


@pytest.mark.parametrize(
    "data, syntax, error",
    [
        (os.urandom(256), ExplicitVRLittleEndian, UnreadableDataset),
        (b"\x00" * 64, ImplicitVRLittleEndian, UnreadableDataset),
        (_ui(0x18, "1.2.3") + _ui(0x10D, "1.2")[:-2], ExplicitVRLittleEndian, UnreadableDataset),
        (_ui(0x18, "1.2.3") + _ui(0x10E, "1.2"), ExplicitVRLittleEndian, MissingAttribute),
        (_ui(0x18, "1.2.3") + _ui(0x10D, "../..") + _ui(0x10E, "1.2"), ExplicitVRLittleEndian, InvalidUid),
    ],
    ids=["random", "zeros", "truncated", "no-study", "crafted-study"],
)
def test_malformed_data_sets_raise_typed_errors(data, syntax, error):
    with pytest.raises(error):
        read_instance_header(data, syntax)


def _deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def test_a_deflate_bomb_is_refused_after_inflating_no_more_than_its_limit():
    bomb = _deflated(b"\x00" * (64 << 20))  # 64 MiB of zeros in about 64 KiB
    assert len(bomb) < 100_000
    with pytest.raises(InstanceTooLarge, match="DICOM_MAX_INFLATED_BYTES"):
        check_inflated_size([bomb], 8 << 20)
    assert check_inflated_size([bomb[i:i + 1000] for i in range(0, len(bomb), 1000)], 64 << 20) == 64 << 20


def test_a_corrupt_or_cut_deflated_stream_is_unreadable():
    stream = _deflated(b"0123456789" * 1000)
    with pytest.raises(UnreadableDataset, match="corrupt"):
        check_inflated_size([b"not deflate at all"], 1 << 20)
    with pytest.raises(UnreadableDataset, match="ends before"):
        check_inflated_size([stream[: len(stream) // 2]], 1 << 20)


def test_the_inflated_prefix_stops_at_its_size():
    stream = _deflated(bytes(range(256)) * 10_000)
    assert inflated_prefix([stream], 1000) == (bytes(range(256)) * 4)[:1000]
    assert len(inflated_prefix([stream[i:i + 7] for i in range(0, len(stream), 7)], 5000)) == 5000


@pytest.mark.parametrize(("charset", "name"), [("ISO_IR 192", "Wang^XiaoDong=王^小東"), ("ISO_IR 100", "Müller^Jürgen"),
                                               ("", "Doe^Jane")])
def test_the_patient_context_is_read_in_the_data_sets_character_set(charset, name):
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    dataset = Dataset()
    if charset:
        dataset.SpecificCharacterSet = charset
    dataset.SOPClassUID, dataset.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
    dataset.AccessionNumber, dataset.PatientName, dataset.PatientID = "ACC-1", name, "PID-1"
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    for syntax, implicit in (("1.2.840.10008.1.2.1", False), ("1.2.840.10008.1.2", True)):
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
        write_dataset(buffer, dataset)
        header = read_instance_header(buffer.getvalue(), syntax)
        assert (header.patient_name, header.patient_id, header.accession_number) == (name, "PID-1", "ACC-1")
        assert name not in repr(header) and "PID-1" not in repr(header)  # never in a log line that prints it
