"""Writing a result object (SR, SEG, SC, KO) we built to a DICOM file, encoded once.

pydicom writes every dataset of a tree with ``write_dataset``; for a dataset made in memory (no original encoding) that
call corrects the ambiguous VRs of the dataset *and of all its descendants* before writing it, and it is called again
for every sequence item at every depth: a SEG's per-frame functional groups or an SR's content tree are walked once per
ancestor, and then each element costs it a buffer, a charset conversion and a dispatch. ``write_result`` corrects the
whole tree once, lets pydicom write the preamble and the file meta information, and encodes the dataset itself with
``encoding.encode_dataset`` (Explicit VR Little Endian, what highdicom builds our objects in). The bytes are the same as
``dataset.save_as(..., enforce_file_format=True)`` writes (but for elements copied undecoded from a source file: see
``encoding``); any other transfer syntax is written by pydicom.
"""

from __future__ import annotations

import copy
from typing import BinaryIO

from pydicom import filewriter
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_node.results.encoding import encode_dataset

__all__ = ["write_result"]


def _file_meta(dataset: Dataset) -> FileMetaDataset:
    """The file meta information pydicom's ``dcmwrite(enforce_file_format=True)`` writes for ``dataset``."""
    meta = copy.deepcopy(dataset.file_meta)  # as pydicom: its group length is rewritten on the way
    for meta_keyword, keyword in (("MediaStorageSOPClassUID", "SOPClassUID"),
                                  ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        value = dataset.get(keyword)
        if meta.get(meta_keyword) is None or (value and value != meta.get(meta_keyword)):
            setattr(meta, meta_keyword, value)
    return meta


def write_result(dataset: Dataset, handle: BinaryIO) -> None:
    """Write ``dataset`` (with its file meta information) to the binary file ``handle`` as a DICOM Part 10 file."""
    if "TransferSyntaxUID" not in getattr(dataset, "file_meta", {}):
        raise ValueError("dataset has no file meta Transfer Syntax UID: build it with highdicom")
    syntax = UID(dataset.file_meta.TransferSyntaxUID)
    if syntax != ExplicitVRLittleEndian:
        dataset.save_as(handle, enforce_file_format=True)  # pydicom corrects the ambiguous VRs itself
        return
    # pydicom's order: every check before anything is changed or written
    if any(tag >> 16 in (0, 2) for tag in dataset._dict):
        raise ValueError("command (0000,eeee) and file meta (0002,eeee) elements belong outside the dataset")
    preamble = getattr(dataset, "preamble", None) or b"\x00" * 128
    if len(preamble) != 128:
        raise ValueError(f"the preamble must be 128 bytes long, not {len(preamble)}")
    meta = filewriter.DicomBytesIO()
    filewriter.write_file_meta_info(meta, _file_meta(dataset), enforce_standard=True)  # validates it
    if "PixelData" in dataset:
        dataset["PixelData"].is_undefined_length = False  # native pixel data in this syntax, as pydicom sets it
    filewriter.correct_ambiguous_vr(dataset, True)
    body = encode_dataset(dataset)
    handle.write(preamble + b"DICM" + meta.getvalue())
    handle.write(body)
