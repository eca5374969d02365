"""Small synthetic source studies (CT, 4-sequence brain MRI, chest X-ray) as pydicom Datasets with realistic tags.

The patient is fictitious; pixel data are small and reproducible. ``engine_affine`` gives the (X, Y, Z) = (column, row,
slice) voxel-to-RAS affine the engines use for a series, so tests can put label volumes on the source grid.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

__all__ = ["SourceStudy", "ct_study", "brain_mr_study", "cxr_study", "engine_affine", "write_datasets"]

_ROOT = "1.2.826.0.1.3680043.8.498"  # pydicom's root: fine for test data
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def _uid(*names: object) -> str:
    digest = int.from_bytes(hashlib.sha256("/".join(map(str, names)).encode()).digest()[:12], "big")
    return f"{_ROOT}.{digest}"


@dataclass
class SourceStudy:
    """One study: its series (lists of Datasets, in slice order) by a short name."""

    study_instance_uid: str
    series: dict[str, list[Dataset]] = field(default_factory=dict)

    @property
    def all_instances(self) -> list[Dataset]:
        return [ds for datasets in self.series.values() for ds in datasets]


def _common(study: str, tag: str, modality: str, accession: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Synthetic^Patient"
    ds.PatientID = f"M3E-{tag}"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study
    ds.StudyDate = "20260101"
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "Referring^Doctor"
    ds.StudyDescription = f"{tag} synthetic study"
    ds.Modality = modality
    ds.Manufacturer = "Synthetic Modality Inc"
    ds.ManufacturerModelName = "Synth 1"
    ds.InstitutionName = "Test Hospital"
    ds.DeviceSerialNumber = "SN-1"
    ds.SoftwareVersions = "1.0"
    return ds


def _finish(ds: Dataset, sop_class: str, pixels: np.ndarray) -> Dataset:
    ds.SOPClassUID = sop_class
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = ds.get("PhotometricInterpretation", "MONOCHROME2")
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = pixels.tobytes()
    return ds


def _volume_series(
    study: str, tag: str, modality: str, sop_class: str, series_number: int, description: str,
    shape: tuple[int, int, int], spacing: tuple[float, float, float], extra: dict[str, object],
    accession: str, frame_of_reference: str,
) -> list[Dataset]:
    rows, columns, slices = shape
    series = _uid(study, "series", series_number)
    rng = np.random.default_rng(series_number)
    datasets = []
    for k in range(slices):
        ds = _common(study, tag, modality, accession)
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.SOPInstanceUID = _uid(series, k)
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-0.5 * columns * spacing[1], -0.5 * rows * spacing[0], -40.0 + k * spacing[2]]
        ds.SliceLocation = ds.ImagePositionPatient[2]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = spacing[2]
        ds.AcquisitionNumber = 1
        ds.ContentDate = ds.StudyDate
        ds.ContentTime = ds.StudyTime
        ds.PatientPosition = "HFS"
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        datasets.append(_finish(ds, sop_class, rng.integers(0, 1000, (rows, columns), dtype=np.int16)))
    return datasets


def ct_study(slices: int = 6, rows: int = 24, columns: int = 20) -> SourceStudy:
    """One axial CT series, 0.8 x 0.8 x 2.5 mm."""
    study = _uid("ct-study")
    extra = {
        "KVP": 120, "RescaleIntercept": -1024, "RescaleSlope": 1, "RescaleType": "HU", "BodyPartExamined": "ABDOMEN",
    }
    series = _volume_series(study, "CT", "CT", CT_IMAGE_STORAGE, 2, "Abdomen 2.5mm", (rows, columns, slices),
                            (0.8, 0.8, 2.5), extra, "ACC-CT-1", _uid(study, "frame"))
    return SourceStudy(study, {"ct": series})


def brain_mr_study(slices: int = 5, rows: int = 16, columns: int = 16) -> SourceStudy:
    """Four co-registered 1 mm axial sequences: T1c, T1, T2, FLAIR (the BraTS inputs), one frame of reference."""
    study = _uid("mr-study")
    frame = _uid(study, "frame")
    result = SourceStudy(study)
    for number, (name, description) in enumerate(
        [("t1c", "T1 post contrast"), ("t1", "T1"), ("t2", "T2"), ("flair", "FLAIR")], start=3
    ):
        extra = {"ScanningSequence": "SE", "SequenceVariant": "NONE", "ScanOptions": "", "MRAcquisitionType": "3D",
                 "RepetitionTime": 500.0, "EchoTime": 10.0, "EchoTrainLength": 1, "MagneticFieldStrength": 3.0,
                 "BodyPartExamined": "BRAIN"}
        result.series[name] = _volume_series(study, "MR", "MR", MR_IMAGE_STORAGE, number, description,
                                             (rows, columns, slices), (1.0, 1.0, 1.0), extra, "ACC-MR-1", frame)
    return result


def cxr_study(size: int = 32) -> SourceStudy:
    """One frontal PA chest radiograph (DX for presentation)."""
    study = _uid("cxr-study")
    ds = _common(study, "CXR", "DX", "ACC-CXR-1")
    ds.SeriesInstanceUID = _uid(study, "series", 1)
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Chest PA"
    ds.SOPInstanceUID = _uid(study, "image")
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.PixelIntensityRelationship = "LOG"
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.PatientOrientation = ["L", "F"]
    pixels = np.random.default_rng(7).integers(0, 4095, (size, size), dtype=np.uint16)
    _finish(ds, DX_IMAGE_STORAGE, pixels)
    ds.BitsStored = 12
    ds.HighBit = 11
    return SourceStudy(study, {"cxr": [ds]})


def engine_affine(series: list[Dataset]) -> np.ndarray:
    """The engines' affine of a series stacked in the order given: (column, row, slice) index -> RAS mm."""
    first, last = series[0], series[-1]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    origin = np.asarray(first.ImagePositionPatient, dtype=float)
    slice_step = (
        (np.asarray(last.ImagePositionPatient, dtype=float) - origin) / (len(series) - 1)
        if len(series) > 1 else np.cross(orientation[:3], orientation[3:])
    )
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * column_spacing
    lps[:3, 1] = orientation[3:] * row_spacing
    lps[:3, 2] = slice_step
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def write_datasets(folder: Path, datasets: list[Dataset]) -> list[Path]:
    """Write each dataset as a DICOM file (Part 10) named after its SOP Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


