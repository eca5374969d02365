"""Writing a result object (SR, SEG, SC, KO) we built to a DICOM file, encoded once.

pydicom writes every dataset of a tree with ``write_dataset``; for a dataset made in memory (no original encoding) that
call corrects the ambiguous VRs of the dataset *and of all its descendants* before writing it, and it is called again
for every sequence item at every depth: a SEG's per-frame functional groups or an SR's content tree are walked once per
ancestor. ``write_result`` corrects the whole tree once and then records, on every dataset, the encoding it is about to
be written in (``Dataset.set_original_encoding``, pydicom's documented way to write without re-decoding), so pydicom
writes each dataset once. The bytes are the same as ``dataset.save_as(..., enforce_file_format=True)`` writes.
"""

from __future__ import annotations

from typing import BinaryIO

from pydicom import filewriter
from pydicom.dataset import Dataset
from pydicom.uid import UID

__all__ = ["write_result"]


def _datasets(dataset: Dataset):
    """``dataset`` and every dataset nested in its sequences (raw elements decoded on the way)."""
    stack = [dataset]
    while stack:
        current = stack.pop()
        yield current
        for element in current:  # iterating decodes raw elements, as pydicom's own correction path does
            if element.VR == "SQ":
                stack.extend(element.value)


def write_result(dataset: Dataset, handle: BinaryIO) -> None:
    """Write ``dataset`` (with its file meta information) to the binary file ``handle`` as a DICOM Part 10 file."""
    if "TransferSyntaxUID" not in getattr(dataset, "file_meta", {}):
        raise ValueError("dataset has no file meta Transfer Syntax UID: build it with highdicom")
    syntax = UID(dataset.file_meta.TransferSyntaxUID)
    implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    filewriter.correct_ambiguous_vr(dataset, little)
    for each in _datasets(dataset):
        each.set_original_encoding(implicit, little, each._character_set)  # what write_dataset compares with
    dataset.save_as(handle, enforce_file_format=True)
