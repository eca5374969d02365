"""``write_result`` against ``save_as(enforce_file_format=True)`` where a review found them apart: elements copied from a
file, errors, a refused file meta; and a broad generated comparison (bytes, exception type, nothing written)."""

from __future__ import annotations

import copy
import warnings
from io import BytesIO

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DSdecimal, DSfloat, IS, PersonName

from dicom_node.results import write_result


def _base(**elements) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _outcome(write) -> bytes | str:
    buffer = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            write(buffer)
        except Exception as exc:
            return type(exc).__name__  # pydicom may have written part of the file by then; we write nothing
    return buffer.getvalue()


def _assert_same(ds: Dataset) -> None:
    ours, theirs = copy.deepcopy(ds), copy.deepcopy(ds)
    assert _outcome(lambda b: write_result(ours, b)) == _outcome(lambda b: theirs.save_as(b, enforce_file_format=True))


def _read_back(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))


def test_items_copied_from_a_file_are_written_with_their_values_as_read():
    # highdicom copies a source's sequences (Procedure Code, Referenced Study, ...) element and items as read
    source = _base()
    source.ProcedureCodeSequence = Sequence([Dataset()])
    source.ProcedureCodeSequence[0].CodeValue = "ABC  "  # more than the padding: trailing spaces do not count
    source.ProcedureCodeSequence[0].CodeMeaning = "X"
    ds = _base()
    ds.ProcedureCodeSequence = _read_back(source).ProcedureCodeSequence
    buffer = BytesIO()
    write_result(ds, buffer)
    written = pydicom.dcmread(BytesIO(buffer.getvalue())).ProcedureCodeSequence[0]
    assert (written.CodeValue, written.CodeMeaning) == ("ABC", "X")


def test_latin_1_items_copied_into_a_utf_8_result_become_utf_8():
    source = _base(SpecificCharacterSet="ISO_IR 100")
    item = Dataset()
    item.CodeMeaning = "Zürich"
    source.ProcedureCodeSequence = Sequence([item])
    ds = _base(SpecificCharacterSet="ISO_IR 192")
    ds.ProcedureCodeSequence = _read_back(source).ProcedureCodeSequence
    buffer = BytesIO()
    write_result(ds, buffer)
    assert "Zürich".encode("utf-8") in buffer.getvalue()
    assert "Zürich".encode("latin-1") not in buffer.getvalue()  # pydicom's save_as would copy these bytes
    assert pydicom.dcmread(BytesIO(buffer.getvalue())).ProcedureCodeSequence[0].CodeMeaning == "Zürich"


@pytest.mark.parametrize("vr, value", [("FL", 1e40), ("FL", [1.0, 1e40]), ("CS", "山")])
def test_errors_are_raised_as_pydicom_raises_them(vr, value):
    ds = _base()
    ds.add_new(0x00090010, "LO", "PRIV")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.add_new(0x00091001, vr, value)
    _assert_same(ds)


def test_nothing_is_written_when_the_file_meta_is_refused():
    ds = _base()
    del ds.SOPClassUID
    _assert_same(ds)
    buffer = BytesIO()
    with pytest.raises(AttributeError):
        write_result(ds, buffer)
    assert buffer.getvalue() == b""  # as pydicom, which checks the file meta before writing anything


_CHARSETS = [None, "", "ISO_IR 100", "ISO_IR 192", "ISO_IR 6", ["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 100"],
             "ISO_IR 13", "GB18030", ["ISO_IR 100", "ISO 2022 IR 87"], "ISO 2022 IR 87", "ISO_IR 144", "bogus"]
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8) | st.text(
    st.sampled_from(list("AB 1\\.^=")), max_size=8)
_SCALARS = st.one_of(
    _TEXT, st.integers(-(2**33), 2**33), st.sampled_from([0, 1, 65535, 65536, -1, 2**31, 2**63]),
    st.floats(allow_nan=False), st.sampled_from([1e40, -0.0, 0.1]), st.none(), st.binary(max_size=5),
    st.sampled_from([DSfloat("1.50", auto_format=False), DSdecimal("2.5"), IS("007"), True, np.float64(1.5),
                     np.uint16(3), np.int32(-4), PersonName("A^B")]))
_VALUES = _SCALARS | st.lists(_SCALARS, max_size=3) | st.sampled_from([np.array([1, 2], dtype=np.uint16), []])
_TAGS = {"AE": 0x00080054, "AS": 0x00101010, "CS": 0x00080060, "DA": 0x00080020, "DS": 0x00280030,
         "DT": 0x0008002A, "FL": 0x00189069, "FD": 0x00189087, "IS": 0x00200013, "LO": 0x00081030,
         "LT": 0x00204000, "PN": 0x00100010, "SH": 0x00080050, "SL": 0x00091021, "SS": 0x00091022,
         "ST": 0x00080081, "TM": 0x00080030, "UC": 0x00080119, "UI": 0x00081155, "UL": 0x00081161,
         "US": 0x00280010, "UT": 0x00400280, "UR": 0x0008010E, "SV": 0x00091023, "UV": 0x00091024,
         "OB": 0x00091012, "UN": 0x00091013, "AT": 0x00209165}


@st.composite
def _datasets(draw, depth: int = 0) -> Dataset:
    ds = Dataset()
    charset = draw(st.sampled_from(_CHARSETS))
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.add_new(0x00090010, "LO", "FUZZ")
    for _ in range(draw(st.integers(0, 4))):
        vr = draw(st.sampled_from(sorted(_TAGS)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds.add(DataElement(_TAGS[vr], vr, draw(_VALUES)))
            except Exception:
                pass
    if depth < 2 and draw(st.booleans()):
        items = draw(st.lists(_datasets(depth + 1), max_size=2))
        ds.ContentSequence = Sequence(items)
        ds["ContentSequence"].is_undefined_length = draw(st.booleans())
        for item in items:
            item.is_undefined_length_sequence_item = draw(st.booleans())
    return ds


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(_datasets())
def test_generated_datasets_write_as_save_as_writes(dataset):
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID, dataset.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3"
    _assert_same(dataset)
