"""``encode_dataset`` writes the bytes pydicom writes, for every VR and edge it handles itself or hands back."""

from __future__ import annotations

import copy
import datetime
from io import BytesIO

import pydicom
import pydicom.filewriter
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DA, DSfloat, TM

import dicom_node.results.encoding as encoding
from dicom_node.results import build_segmentation, write_result
from dicom_node.results.encoding import encode_dataset
from tests.support.result_cases import FIXED_TIME, ct_case


def _pydicom_bytes(dataset: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buffer, dataset)
    return buffer.getvalue()


def _same_as_pydicom(dataset: Dataset) -> bytes:
    ours = encode_dataset(copy.deepcopy(dataset))
    assert ours == _pydicom_bytes(copy.deepcopy(dataset))
    return ours


def _item(**elements) -> Dataset:
    item = Dataset()
    for keyword, value in elements.items():
        setattr(item, keyword, value)
    return item


def _every_vr() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPInstanceUID = "1.2.3"  # odd length: NUL padding
    ds.SOPClassUID = generate_uid()
    ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL"]
    ds.Modality = "SEG"
    ds.StudyDate = "20261126"
    ds.SeriesDate = DA(datetime.date(2026, 11, 26))  # a date object: formatted by pydicom
    ds.StudyTime = TM(datetime.time(12, 30, 5, 120))
    ds.ContentTime = "123005"
    ds.AcquisitionDateTime = "20261126123005.5"
    ds.PatientAge = "054Y"
    ds.RetrieveAETitle = "M3EDGE"
    ds.PixelSpacing = [DSfloat("0.7421875"), 0.8]
    ds.SliceThickness = DSfloat("2.50", auto_format=False)  # keeps its original string
    ds.ImagePositionPatient = [-19.0, 19.0, -30.5]
    ds.InstanceNumber = 7
    ds.ReferencedFrameNumber = [1, 2, 3]
    ds.Rows, ds.Columns = 48, 48
    ds.LargestImagePixelValue = 4095  # US or SS: ambiguous until corrected below
    ds.PixelRepresentation = 0
    ds.BitsAllocated = 16
    ds.RescaleSlope = "1"
    ds.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.AcquisitionMatrix = [0, 48, 48, 0]
    ds.PhysicalDeltaX = 0.25
    ds.SelectorFDValue = [0.5, 1.5]
    ds.SelectorFLValue = [1.25]
    ds.SelectorULValue = 70000
    ds.SelectorSLValue = -3
    ds.SelectorSSValue = [-1, 2]
    ds.SelectorSVValue = -(2**40)
    ds.SelectorUVValue = 2**40
    ds.SelectorUSValue = 1
    ds.DimensionIndexPointer = [0x00209111, 0x0020911E]
    ds.InstitutionName = "Hôpital Saint-Éloi"  # not ASCII: pydicom encodes it
    ds.StationName = "CT1"
    ds.SeriesDescription = "AI DRAFT VISTA3D"  # odd-length ASCII text: space padding
    ds.ImageComments = "line one\r\nline two \\ with a backslash"
    ds.PatientComments = ""
    ds.PatientName = "Phantom^CT"
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = None
    ds.InstanceCreationDate = None
    ds.RedPaletteColorLookupTableDescriptor = [256, 0, 16]
    ds.RecommendedDisplayFrameRateInFloat = []  # an empty binary value
    ds.add_new(0x00081160, "IS", [])  # an empty multi-valued number string
    ds.add_new(0x7FE00010, "OB", b"\x01\x02\x03")  # odd-length bytes: padded by pydicom
    ds.add_new(0x00091010, "LO", "M3EDGE PRIVATE")
    ds.add_new(0x00091011, "UN", b"\x00\x01")
    ds.add_new(0x00101000, "LO", ["A1", "B2"])  # Other Patient IDs: multi-valued text
    nested = _item(CodeValue="10200004", CodingSchemeDesignator="SCT", CodeMeaning="Liver")
    ds.AnatomicRegionSequence = Sequence([nested])
    ds.ReferencedSeriesSequence = Sequence([])  # an empty sequence
    undefined = Sequence([_item(SeriesInstanceUID="1.2.840.99", ReferencedInstanceSequence=Sequence([
        _item(ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2", ReferencedSOPInstanceUID="1.2.5")]))])
    ds.StudiesContainingOtherReferencedInstancesSequence = undefined
    ds["StudiesContainingOtherReferencedInstancesSequence"].is_undefined_length = True
    undefined[0].is_undefined_length_sequence_item = True
    japanese = _item(SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName="Yamada^Tarou=山田^太郎",
                     InstitutionName="ASCII under ISO 2022")
    latin = _item(SpecificCharacterSet="ISO_IR 100", InstitutionName="Zürich", StationName="CT2")
    ds.OtherPatientIDsSequence = Sequence([japanese, latin, _item(InstitutionName="inherits UTF-8: Ærø")])
    ds.add_new(0x00080000, "UL", 123)  # a retired group length: left out by both
    pydicom.filewriter.correct_ambiguous_vr(ds, True)
    return ds


def test_every_vr_and_edge_encodes_as_pydicom_does():
    encoded = _same_as_pydicom(_every_vr())
    assert b"Hospital" not in encoded and "Hôpital".encode() in encoded
    assert "山田".encode("iso2022_jp") in encoded  # code extensions: left to pydicom


def test_elements_read_from_a_file_encode_as_pydicom_does():
    source = _every_vr()
    source.file_meta = FileMetaDataset()
    source.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    for element in list(source):
        if element.VR in ("OB", "UN") or element.tag.is_private:
            del source[element.tag]
    buffer = BytesIO()
    source.save_as(buffer, implicit_vr=True, little_endian=True)
    read = pydicom.dcmread(BytesIO(buffer.getvalue()), force=True)
    del read.file_meta
    read.set_original_encoding(None, None, None)  # what a copied header looks like inside a built object
    pydicom.filewriter.correct_ambiguous_vr(read, True)
    _same_as_pydicom(read)


def test_a_value_too_long_for_a_16_bit_length_is_left_to_pydicom():
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.add_new(0x00081030, "LO", "x" * 70_000)
    with pytest.warns(UserWarning, match="exceeds the size of 64 kByte"):
        encoded = encode_dataset(copy.deepcopy(ds))
    with pytest.warns(UserWarning, match="exceeds the size of 64 kByte"):
        assert encoded == _pydicom_bytes(ds)


def test_a_segmentation_is_encoded_without_pydicom_for_its_frames(monkeypatch):
    case = ct_case()
    seg = build_segmentation(case.content.findings, case.uids, now=FIXED_TIME)
    handed_back = []
    original = pydicom.filewriter.write_data_element

    def counting(fp, element, encodings=None):
        handed_back.append(element.keyword)
        return original(fp, element, encodings)

    monkeypatch.setattr(encoding.filewriter, "write_data_element", counting)
    plain = BytesIO()
    copy.deepcopy(seg).save_as(plain, enforce_file_format=True)
    elements_written = len(handed_back)
    handed_back.clear()
    ours = BytesIO()
    write_result(seg, ours)
    assert ours.getvalue() == plain.getvalue()
    # what pydicom still writes: the file meta, person names, dates as date objects, tags, bulk data: the same few
    # elements whatever the number of frames, where pydicom writes every element of every frame
    per_frame = {element.keyword for group in seg.PerFrameFunctionalGroupsSequence for item in _walk(group)
                 for element in item}
    assert not per_frame & set(handed_back), sorted(per_frame & set(handed_back))
    assert len(handed_back) < 30 < 400 < elements_written, sorted(handed_back)


def _walk(dataset: Dataset):
    yield dataset
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


_ASCII_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="\\"), max_size=20)
_ANY_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_characters="\\",
                                  exclude_categories=("Cs",)), max_size=12)


@st.composite
def _datasets(draw, depth: int = 0) -> Dataset:
    ds = Dataset()
    if draw(st.booleans()):
        ds.SpecificCharacterSet = draw(st.sampled_from(["ISO_IR 100", "ISO_IR 192", ["", "ISO 2022 IR 87"]]))
    if draw(st.booleans()):
        ds.CodeMeaning = draw(_ANY_TEXT if ds.get("SpecificCharacterSet") == "ISO_IR 192" else _ASCII_TEXT)
    if draw(st.booleans()):
        ds.CodeValue = draw(_ASCII_TEXT.map(lambda s: s[:16]))
    if draw(st.booleans()):
        ds.ImageType = draw(st.lists(st.sampled_from(["ORIGINAL", "DERIVED", "PRIMARY", "A B"]), max_size=3))
    if draw(st.booleans()):
        ds.ReferencedSOPInstanceUID = draw(st.from_regex(r"1\.2(\.[1-9][0-9]{0,5}){1,6}", fullmatch=True))
    if draw(st.booleans()):
        ds.ImagePositionPatient = draw(st.lists(st.floats(-1e4, 1e4, allow_nan=False).map(
            lambda v: round(v, 3)), min_size=3, max_size=3))
    if draw(st.booleans()):
        ds.ReferencedFrameNumber = draw(st.lists(st.integers(1, 10_000), max_size=4))
    if draw(st.booleans()):
        ds.SelectorFDValue = draw(st.lists(st.floats(allow_nan=False), max_size=3))
    if draw(st.booleans()):
        ds.Rows = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        ds.TextValue = draw(_ASCII_TEXT)
    if depth < 2 and draw(st.booleans()):
        ds.ContentSequence = Sequence(draw(st.lists(_datasets(depth + 1), max_size=3)))
        ds["ContentSequence"].is_undefined_length = draw(st.booleans())
        for item in ds.ContentSequence:
            item.is_undefined_length_sequence_item = draw(st.booleans())
    return ds


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_datasets())
def test_generated_datasets_encode_as_pydicom_does(dataset):
    _same_as_pydicom(dataset)


def test_write_result_gives_the_file_meta_pydicom_gives():
    case = ct_case()
    seg = build_segmentation(case.content.findings, case.uids, now=FIXED_TIME)
    seg.file_meta.MediaStorageSOPInstanceUID = "1.2.3"  # stale: both bring it in line with the dataset
    plain, ours = BytesIO(), BytesIO()
    copy.deepcopy(seg).save_as(plain, enforce_file_format=True)
    write_result(seg, ours)
    assert ours.getvalue() == plain.getvalue()
    assert seg.file_meta.MediaStorageSOPInstanceUID == "1.2.3"  # the caller's file meta is left as it was
    assert pydicom.dcmread(BytesIO(ours.getvalue())).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
