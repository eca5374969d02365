"""Realistic synthetic DICOM series for tests: CT and MR stacks with real geometry, enhanced multi-frame, brain MRI
studies with four sequences on different grids, and chest radiographs (PA / AP / LATERAL, MONOCHROME1, VOI LUT).

Everything is a pydicom ``Dataset`` with file meta, writable with ``write_datasets``. Voxel values are given as an
array ``values[i, j, k]`` (column i, row j, slice k: the convention of ``dicom_node.volumes``), or sampled from a
function of RAS position with ``sample_ras``; ``SeriesGeometry.ras_affine`` is the affine a correct reader must
return for the stack as generated (slices in acquisition order). Patient data are obviously fake.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

__all__ = [
    "SeriesGeometry",
    "SyntheticStudy",
    "axial_geometry",
    "brain_mri_study",
    "coronal_geometry",
    "ct_series",
    "cxr_dataset",
    "enhanced_series",
    "localizer_image",
    "mr_series",
    "sagittal_geometry",
    "sample_ras",
    "with_changes",
    "write_datasets",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ds(value: float) -> str:
    """A DS string of at most 16 characters (pydicom validates writes strictly in the tests)."""
    return format_number_as_ds(float(value)) if value != 0 else "0"


@dataclass(frozen=True)
class SyntheticStudy:
    """Identity shared by the series of one study (fake patient data)."""

    study_instance_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    patient_id: str = "SYNTH0001"
    patient_name: str = "Synthetic^Phantom"
    accession_number: str = "ACC0001"
    study_date: str = "20240102"


@dataclass(frozen=True)
class SeriesGeometry:
    """A stack of ``slices`` images of ``rows`` x ``columns`` pixels in DICOM patient space (LPS).

    ``origin``: ImagePositionPatient of the first slice; ``row_cosine`` / ``column_cosine``: ImageOrientationPatient;
    ``pixel_spacing``: (row spacing, column spacing); ``slice_step``: LPS vector from one slice's position to the
    next (by default the normal times ``slice_spacing``; anything else shears the stack, e.g. a gantry tilt).
    """

    rows: int
    columns: int
    slices: int
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    row_cosine: tuple[float, float, float] = (1.0, 0.0, 0.0)
    column_cosine: tuple[float, float, float] = (0.0, 1.0, 0.0)
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    slice_spacing: float = 1.0
    slice_step: tuple[float, float, float] | None = None

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosine, self.column_cosine)

    @property
    def step(self) -> np.ndarray:
        return np.asarray(self.slice_step, dtype=float) if self.slice_step is not None else self.normal * self.slice_spacing

    def position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of slice ``k`` (LPS mm)."""
        return np.asarray(self.origin, dtype=float) + k * self.step

    @property
    def lps_affine(self) -> np.ndarray:
        affine = np.eye(4)
        affine[:3, 0] = np.asarray(self.row_cosine) * self.pixel_spacing[1]
        affine[:3, 1] = np.asarray(self.column_cosine) * self.pixel_spacing[0]
        affine[:3, 2] = self.step
        affine[:3, 3] = self.origin
        return affine

    @property
    def ras_affine(self) -> np.ndarray:
        """(i, j, k) -> RAS mm for the stack in generation order."""
        return LPS_TO_RAS @ self.lps_affine

    @property
    def shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) = (columns, rows, slices)."""
        return (self.columns, self.rows, self.slices)


def axial_geometry(rows: int, columns: int, slices: int, *, pixel_spacing=(0.8, 0.8), slice_spacing=2.5,
                   origin=(-100.0, -120.0, -50.0), slice_step=None) -> SeriesGeometry:
    """Head-first supine axial: rows run posterior, columns to the patient's left, slices superior."""
    return SeriesGeometry(rows, columns, slices, tuple(origin), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                          tuple(pixel_spacing), float(slice_spacing), slice_step)


def sagittal_geometry(rows: int, columns: int, slices: int, *, pixel_spacing=(1.0, 1.0), slice_spacing=1.0,
                      origin=(-60.0, -120.0, 100.0)) -> SeriesGeometry:
    """Sagittal: columns run posterior, rows inferior, slices towards the patient's right (normal = row x column)."""
    return SeriesGeometry(rows, columns, slices, tuple(origin), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0),
                          tuple(pixel_spacing), float(slice_spacing))


def coronal_geometry(rows: int, columns: int, slices: int, *, pixel_spacing=(1.0, 1.0), slice_spacing=1.0,
                     origin=(-100.0, -60.0, 100.0)) -> SeriesGeometry:
    """Coronal: columns run to the patient's left, rows inferior, slices posterior (normal = row x column)."""
    return SeriesGeometry(rows, columns, slices, tuple(origin), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0),
                          tuple(pixel_spacing), float(slice_spacing))


def sample_ras(geometry: SeriesGeometry, function: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """values[i, j, k] = function(RAS points (X, Y, Z, 3)) at every voxel centre of ``geometry``."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in geometry.shape], indexing="ij"), axis=-1)
    affine = geometry.ras_affine
    return function(grid @ affine[:3, :3].T + affine[:3, 3])


def _common_attributes(ds: Dataset, study: SyntheticStudy, sop_class: str) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = study.accession_number
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "m3edge synthetic"
    ds.ContentDate = study.study_date
    ds.ContentTime = "120000"


def _stored_pixels(values: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, int]:
    stored = np.rint((np.asarray(values, dtype=np.float64) - intercept) / slope)
    if stored.min() < 0:
        return np.clip(stored, -32768, 32767).astype(np.int16), 1
    return np.clip(stored, 0, 65535).astype(np.uint16), 0


def _cross_sectional_series(
    values: np.ndarray, geometry: SeriesGeometry, *, study: SyntheticStudy, modality: str, sop_class: str,
    description: str, series_number: int, rescale_slope: float, rescale_intercept: float, reverse_order: bool,
    image_type: Sequence[str], extra: Callable[[Dataset, int], None] | None,
) -> list[Dataset]:
    values = np.asarray(values)
    if values.shape != geometry.shape:
        raise ValueError(f"values {values.shape} must have the geometry's (columns, rows, slices) {geometry.shape}")
    series_uid = generate_uid()
    datasets = []
    for k in range(geometry.slices):
        ds = Dataset()
        _common_attributes(ds, study, sop_class)
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        ds.ImageType = list(image_type)
        ds.FrameOfReferenceUID = study.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.Laterality = ""
        ds.ImagePositionPatient = [_ds(v) for v in geometry.position(k)]
        ds.ImageOrientationPatient = [_ds(v) for v in (*geometry.row_cosine, *geometry.column_cosine)]
        ds.PixelSpacing = [_ds(v) for v in geometry.pixel_spacing]
        ds.SliceThickness = _ds(geometry.slice_spacing)
        ds.SliceLocation = _ds(float(geometry.position(k) @ geometry.normal))
        stored, signed = _stored_pixels(values[:, :, k].T, rescale_slope, rescale_intercept)  # (rows, columns)
        ds.Rows, ds.Columns = geometry.rows, geometry.columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, signed
        if modality == "CT" or (rescale_slope, rescale_intercept) != (1.0, 0.0):  # MR: only when scaled (Philips)
            ds.RescaleSlope = _ds(rescale_slope)
            ds.RescaleIntercept = _ds(rescale_intercept)
        if modality == "CT":
            ds.RescaleType = "HU"
            ds.KVP = "120"
            ds.AcquisitionNumber = 1
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
        if extra is not None:
            extra(ds, k)
        datasets.append(ds)
    return datasets[::-1] if reverse_order else datasets


def ct_series(
    values: np.ndarray, geometry: SeriesGeometry, *, study: SyntheticStudy | None = None,
    description: str = "CT ABDOMEN 2.5mm", series_number: int = 2, rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0, reverse_order: bool = False, gantry_tilt: float | None = None,
    extra: Callable[[Dataset, int], None] | None = None,
) -> list[Dataset]:
    """A CT series storing ``values`` (HU, (X, Y, Z)) through Rescale Slope/Intercept; ``reverse_order`` lists the
    instances from the last slice to the first; ``gantry_tilt`` sets GantryDetectorTilt (shear the stack with
    ``geometry.slice_step``)."""
    def add_ct(ds: Dataset, k: int) -> None:
        if gantry_tilt is not None:
            ds.GantryDetectorTilt = _ds(gantry_tilt)
        if extra is not None:
            extra(ds, k)

    return _cross_sectional_series(
        values, geometry, study=study or SyntheticStudy(), modality="CT", sop_class=CTImageStorage,
        description=description, series_number=series_number, rescale_slope=rescale_slope,
        rescale_intercept=rescale_intercept, reverse_order=reverse_order,
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"), extra=add_ct,
    )


def mr_series(
    values: np.ndarray, geometry: SeriesGeometry, *, study: SyntheticStudy | None = None,
    description: str = "T1", series_number: int = 3, rescale_slope: float = 1.0, rescale_intercept: float = 0.0,
    reverse_order: bool = False,
) -> list[Dataset]:
    """An MR series of ``values`` ((X, Y, Z), non-negative)."""
    def add_mr(ds: Dataset, k: int) -> None:
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "500", "10", 1
        ds.MagneticFieldStrength = "3"

    return _cross_sectional_series(
        values, geometry, study=study or SyntheticStudy(), modality="MR", sop_class=MRImageStorage,
        description=description, series_number=series_number, rescale_slope=rescale_slope,
        rescale_intercept=rescale_intercept, reverse_order=reverse_order,
        image_type=("ORIGINAL", "PRIMARY", "OTHER"), extra=add_mr,
    )


def localizer_image(series: Sequence[Dataset], *, flagged: bool = True) -> Dataset:
    """A coronal scout filed in ``series`` (same series UID, size and spacing); ``flagged`` puts LOCALIZER in
    ImageType, as scanners do; unflagged it is just an image in another orientation."""
    ds = copy.deepcopy(series[0])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = len(series) + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"] if flagged else ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    ds.ImagePositionPatient = ["-100", "0", "200"]
    return ds


def enhanced_series(datasets: Sequence[Dataset], *, series_number: int = 20) -> Dataset:
    """One multi-frame instance (Legacy Converted Enhanced CT / MR, built by highdicom) of a single-frame series,
    with per-frame functional groups for position and pixel value transformation."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage, LegacyConvertedEnhancedMRImage

    builder = LegacyConvertedEnhancedCTImage if datasets[0].Modality == "CT" else LegacyConvertedEnhancedMRImage
    image = builder(
        list(datasets), series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1,
    )
    image.Laterality = ""  # General Series 2C; highdicom does not carry it over
    return image


def brain_mri_study(
    function: Callable[[np.ndarray], np.ndarray], *, study: SyntheticStudy | None = None,
    descriptions: Sequence[str] = ("T1 post contrast", "T1", "T2", "FLAIR"), extra_series: Sequence[str] = (),
) -> dict[str, list[Dataset]]:
    """A brain MRI study: one series per description (default T1c, T1, T2, FLAIR, in one frame of reference) on
    different grids (3D 1 mm axial, 5 mm axial, 4 mm axial with 0.9 mm pixels, 1.2 mm sagittal), each sampling
    ``function`` (RAS points -> intensity). ``extra_series`` adds more (e.g. "localizer", "DWI") on the first grid.
    Keys are the descriptions."""
    study = study or SyntheticStudy()
    grids = [
        axial_geometry(40, 36, 32, pixel_spacing=(1.0, 1.0), slice_spacing=1.0, origin=(-18.0, -20.0, -16.0)),
        axial_geometry(40, 36, 7, pixel_spacing=(1.0, 1.0), slice_spacing=5.0, origin=(-18.0, -20.0, -15.0)),
        axial_geometry(45, 40, 9, pixel_spacing=(0.9, 0.9), slice_spacing=4.0, origin=(-18.0, -20.0, -15.5)),
        sagittal_geometry(28, 34, 30, pixel_spacing=(1.2, 1.2), slice_spacing=1.2, origin=(17.0, -20.0, 16.0)),
    ]
    series: dict[str, list[Dataset]] = {}
    for number, description in enumerate([*descriptions, *extra_series]):
        geometry = grids[number % len(grids)] if number < len(descriptions) else grids[0]
        values = np.clip(sample_ras(geometry, function), 0, None)
        series[description] = mr_series(values, geometry, study=study, description=description,
                                         series_number=number + 1)
    return series


def cxr_dataset(
    image: np.ndarray, *, view_position: str = "PA", study: SyntheticStudy | None = None,
    photometric: str = "MONOCHROME2", window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None, rescale: tuple[float, float] = (1.0, 0.0), bits_stored: int = 12,
    series_number: int = 1,
) -> Dataset:
    """A DX chest radiograph, for presentation, storing ``image`` (H, W) unsigned stored values.

    ``window`` (centre, width) or ``voi_lut`` (a LUT of output values indexed from first mapped value 0) add a VOI
    transform; ``rescale`` is (slope, intercept); ``photometric`` MONOCHROME1 means low values are white."""
    study = study or SyntheticStudy()
    pixels = np.asarray(image)
    ds = Dataset()
    _common_attributes(ds, study, DigitalXRayImageStorageForPresentation)
    ds.Modality = "DX"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"CHEST {view_position}"
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position
    ds.PatientOrientation = ["A", "F"] if view_position == "LATERAL" else ["L", "F"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.DetectorType = "DIRECT"
    ds.PositionerType = ""
    ds.AcquisitionContextSequence = DicomSequence([])
    chest = Dataset()
    chest.CodeValue, chest.CodingSchemeDesignator, chest.CodeMeaning = "51185008", "SCT", "Chest"
    ds.AnatomicRegionSequence = DicomSequence([chest])
    ds.PixelSpacing = ["0.15", "0.15"]
    ds.ImagerPixelSpacing = ["0.15", "0.15"]
    ds.RescaleSlope, ds.RescaleIntercept = _ds(rescale[0]), _ds(rescale[1])
    ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = _ds(window[0]), _ds(window[1])
    if voi_lut is not None:
        lut = np.asarray(voi_lut, dtype=np.uint16)
        item = Dataset()
        item.LUTDescriptor = [len(lut), 0, 16]
        item.LUTExplanation = "synthetic"
        item.LUTData = lut.tolist()
        ds.VOILUTSequence = DicomSequence([item])
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def write_datasets(datasets: Sequence[Dataset], directory: Path) -> list[Path]:
    """Write each dataset as a DICOM file (``<SOPInstanceUID>.dcm``) in ``directory``; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def with_changes(dataset: Dataset, **attributes) -> Dataset:
    """A copy of ``dataset`` with ``attributes`` set and a new SOP Instance UID (to build odd series in tests)."""
    changed = copy.deepcopy(dataset)
    changed.SOPInstanceUID = generate_uid()
    changed.file_meta.MediaStorageSOPInstanceUID = changed.SOPInstanceUID
    for keyword, value in attributes.items():
        setattr(changed, keyword, value)
    return changed

