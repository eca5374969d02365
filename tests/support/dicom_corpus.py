"""DICOM data for the node's tests and the ingest benchmark.

- ``write_ct_series``: CT-like series (512x512, 16-bit, realistic geometry), as many slices as asked;
- ``pydicom_test_files``: every file pydicom ships as test data that is a valid storage instance we can send;
- ``encode_as``: a copy of an instance re-encoded in another transfer syntax (dcmtk's converters, or pydicom for
  JPEG 2000), for the transfer-syntax tests.

The patient attributes are made up (the tests check they never reach the database or the logs).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

__all__ = [
    "FAKE_PATIENT",
    "CtSeries",
    "write_ct_series",
    "pydicom_test_files",
    "encode_as",
    "TRANSFER_SYNTAXES",
    "dataset_bytes",
]

FAKE_PATIENT = {
    "PatientName": "Testpatient^Henrietta",
    "PatientID": "PID-0042-SECRET",
    "PatientBirthDate": "19510704",
    "AccessionNumber": "ACC99887766",
}

# Every transfer syntax the node must accept, with the dcmtk converter options that produce it (None: pydicom).
TRANSFER_SYNTAXES: dict[str, tuple[str, list[str]] | None] = {
    ImplicitVRLittleEndian: ("dcmconv", ["+ti"]),
    ExplicitVRLittleEndian: ("dcmconv", ["+te"]),
    DeflatedExplicitVRLittleEndian: ("dcmconv", ["+td"]),
    JPEGBaseline8Bit: ("dcmcjpeg", ["+eb"]),
    JPEGExtended12Bit: ("dcmcjpeg", ["+ee"]),
    JPEGLosslessSV1: ("dcmcjpeg", ["+e1"]),
    JPEGLSLossless: ("dcmcjpls", ["+el"]),
    JPEGLSNearLossless: ("dcmcjpls", ["+en"]),
    JPEG2000Lossless: None,
    JPEG2000: None,
    RLELossless: ("dcmcrle", []),
}


@dataclass(frozen=True)
class CtSeries:
    study_uid: str
    series_uid: str
    paths: list[Path]

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.paths)


def _phantom(rows: int, columns: int, z: float, rng: np.random.Generator, bits_stored: int) -> np.ndarray:
    """A body-like slice in stored values (HU + 1024): soft tissue ellipse, two lungs, a spine, noise."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = rows / 2, columns / 2
    hu = np.full((rows, columns), -1000.0, dtype=np.float32)
    body = ((x - cx) / (0.42 * columns)) ** 2 + ((y - cy) / (0.32 * rows)) ** 2 <= 1
    hu[body] = 40.0
    lung_scale = 0.8 + 0.2 * np.cos(z / 60.0)
    for side in (-1, 1):
        lung = ((x - cx - side * 0.17 * columns) / (0.12 * columns * lung_scale)) ** 2 + (
            (y - cy + 0.02 * rows) / (0.2 * rows * lung_scale)
        ) ** 2 <= 1
        hu[lung] = -820.0
    spine = ((x - cx) / (0.04 * columns)) ** 2 + ((y - cy - 0.2 * rows) / (0.04 * rows)) ** 2 <= 1
    hu[spine] = 700.0
    hu += rng.normal(0.0, 12.0, size=hu.shape).astype(np.float32)
    stored = np.clip(hu + 1024.0, 0, (1 << bits_stored) - 1)
    return stored.astype(np.uint16)


def _ct_dataset(
    *, study_uid: str, series_uid: str, frame_uid: str, index: int, slices: int, rows: int, columns: int,
    pixels: np.ndarray, series_number: int, description: str,
) -> Dataset:
    spacing, thickness = 0.703125, 1.25
    z = -0.5 * slices * thickness + index * thickness
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20240312"
    ds.SeriesDate = "20240312"
    ds.StudyTime = "101500"
    ds.Modality = "CT"
    ds.Manufacturer = "m3edge test corpus"
    ds.StudyDescription = "CT CHEST WITH CONTRAST"
    ds.SeriesDescription = description
    for keyword, value in FAKE_PATIENT.items():
        setattr(ds, keyword, value)
    ds.PatientSex = "F"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = thickness
    ds.KVP = 120
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [-0.5 * columns * spacing, -0.5 * rows * spacing, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = z
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.PixelData = pixels.tobytes()
    return ds


def write_ct_series(
    directory: Path, slices: int = 300, *, rows: int = 512, columns: int = 512, seed: int = 0,
    study_uid: str | None = None, series_number: int = 1, description: str = "AXIAL 1.25MM",
) -> CtSeries:
    """Write one CT series of ``slices`` instances into ``directory`` (about 0.5 MB each at 512x512)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    paths = []
    for index in range(slices):
        pixels = _phantom(rows, columns, float(index), rng, 12)
        ds = _ct_dataset(
            study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, index=index, slices=slices, rows=rows,
            columns=columns, pixels=pixels, series_number=series_number, description=description,
        )
        path = directory / f"CT{series_number:03d}_{index + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return CtSeries(study_uid, series_uid, paths)


def _is_sendable(path: Path) -> bool:
    from pynetdicom import AllStoragePresentationContexts

    storage = {cx.abstract_syntax for cx in AllStoragePresentationContexts}
    try:
        ds = dcmread(path)
        if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
            expected = ds.Rows * ds.Columns * ds.SamplesPerPixel * int(ds.get("NumberOfFrames") or 1) * ds.BitsAllocated
            if len(ds.PixelData) * 8 < expected:
                return False  # truncated pixel data (pydicom ships one on purpose)
    except Exception:  # noqa: BLE001 - pydicom's corpus includes deliberately broken files; they are not sendable
        return False
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta or "MediaStorageSOPClassUID" not in meta:
        return False
    if not all(ds.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")):
        return False
    return str(ds.SOPClassUID) in storage and str(meta.MediaStorageSOPInstanceUID) == str(ds.SOPInstanceUID)


def pydicom_test_files() -> list[Path]:
    """Every test file pydicom ships that is a valid DICOM file of a storage SOP class with its UIDs (sorted)."""
    from pydicom.data import get_testdata_files

    candidates = sorted({Path(p) for p in get_testdata_files()})
    return [p for p in candidates if p.suffix.lower() in {".dcm", ""} and _is_sendable(p)]


def _pydicom_encode(source: Path, transfer_syntax: str, target: Path) -> None:
    ds = dcmread(source)
    if transfer_syntax == JPEG2000:
        ds.compress(transfer_syntax, j2k_cr=[20], generate_instance_uid=False)
    else:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    ds.save_as(target, enforce_file_format=True)


def encode_as(source: Path, transfer_syntax: str, target: Path) -> Path:
    """Write ``source`` re-encoded in ``transfer_syntax`` to ``target`` (same UIDs); raise if the tool fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    recipe = TRANSFER_SYNTAXES[UID(transfer_syntax)]
    if recipe is None:
        _pydicom_encode(source, transfer_syntax, target)
        return target
    tool, options = recipe
    executable = shutil.which(tool)
    if executable is None:
        raise FileNotFoundError(f"{tool} (dcmtk) is needed to encode {transfer_syntax}")
    subprocess.run([executable, *options, str(source), str(target)], check=True, capture_output=True, timeout=120)
    return target


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a DICOM file without preamble and File Meta Information (what a C-STORE carries)."""
    raw = path.read_bytes()
    ds = dcmread(path, stop_before_pixels=True)
    del ds
    offset = 132
    group_length = int.from_bytes(raw[offset + 8 : offset + 12], "little")
    return raw[offset + 12 + group_length :]


def iter_instances(directory: Path) -> Iterator[Path]:
    yield from sorted(p for p in directory.rglob("*.dcm") if ".incoming" not in p.parts)


__all__ += ["iter_instances"]
