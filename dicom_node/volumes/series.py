"""One DICOM series -> one volume: a float32 (X, Y, Z) array of modality values (HU for CT) and a RAS affine.

Pixel data and the modality LUT (Rescale Slope/Intercept, or a Modality LUT Sequence) go through highdicom
(``get_volume_from_series`` for single-frame series, ``Image.get_volume`` for enhanced / legacy-converted multi-frame
CT and MR); the geometry is checked first by ``dicom_node.volumes.geometry`` so a series that is not one regular
volume is refused with the reason, never mis-stacked. Axes and affine follow the convention documented in
``dicom_node.volumes.geometry`` (array[i, j, k] = column i, row j, slice k; affine -> RAS mm).

Localizers: instances whose ImageType contains ``LOCALIZER`` are dropped with a logged note (their SOP Instance UIDs
are listed in ``SeriesVolume.dropped_instances``), because scanners often file the scout in the imaging series and
it is never part of the volume. Any other odd image (another orientation, size or spacing, a second stack) is not
guessed away: the series is refused with a ``VolumeGeometryError`` naming the problem.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from dicom_node.arrays import c_order_copy
from dicom_node.volumes.errors import VolumeError, VolumeGeometryError
from dicom_node.volumes.geometry import FrameGeometry, GeometryTolerances, StackGeometry, check_regular_stack

__all__ = ["SeriesVolume", "frame_geometries", "is_localizer", "volume_from_series"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesVolume:
    """A series as a volume: ``array`` (X, Y, Z) float32 modality values, ``affine`` (i, j, k) -> RAS mm."""

    array: np.ndarray
    affine: np.ndarray
    series_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    series_description: str
    slice_spacing: float
    dropped_instances: tuple[str, ...] = ()

    @property
    def voxel_spacing(self) -> tuple[float, float, float]:
        """Millimetres between voxel centres along i, j, k."""
        lengths = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(lengths[0]), float(lengths[1]), float(lengths[2])


def is_localizer(dataset: Dataset) -> bool:
    """True for a scout/localizer image (``LOCALIZER`` in ImageType)."""
    return "LOCALIZER" in [str(value).upper() for value in (dataset.get("ImageType") or [])]


def _number_of_frames(dataset: Dataset) -> int:
    return int(dataset.get("NumberOfFrames", 1) or 1)


def _frame_from_attributes(source: str, position, orientation, spacing, rows: int, columns: int,
                           functional_groups: bool = False) -> FrameGeometry:
    if position is None or orientation is None or spacing is None:
        missing = [
            name
            for name, value in (
                ("ImagePositionPatient", position),
                ("ImageOrientationPatient", orientation),
                ("PixelSpacing", spacing),
            )
            if value is None
        ]
        where = " in its per-frame or shared functional groups" if functional_groups else ""
        raise VolumeGeometryError(
            f"{source} has no {', '.join(missing)}{where}: it is not a cross-sectional image and cannot be part of a "
            "volume"
        )
    return FrameGeometry(
        position=tuple(float(value) for value in position),
        orientation=tuple(float(value) for value in orientation),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        rows=int(rows),
        columns=int(columns),
        source=source,
    )


def _functional_group_value(dataset: Dataset, frame: int, sequence: str, keyword: str):
    """A frame's value from the per-frame functional groups, else the shared ones (multi-frame IODs)."""
    for groups_keyword, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = dataset.get(groups_keyword)
        if not groups or index >= len(groups):
            continue
        items = groups[index].get(sequence)
        if items and keyword in items[0]:
            return items[0][keyword].value
    return None


def frame_geometries(dataset: Dataset) -> list[FrameGeometry]:
    """The geometry of every frame of one instance (single-frame, or multi-frame with functional groups)."""
    uid = str(dataset.get("SOPInstanceUID", "?"))
    rows, columns = dataset.get("Rows", 0), dataset.get("Columns", 0)
    frames = _number_of_frames(dataset)
    if frames == 1 and "PerFrameFunctionalGroupsSequence" not in dataset:
        return [
            _frame_from_attributes(
                f"instance {uid}",
                dataset.get("ImagePositionPatient"),
                dataset.get("ImageOrientationPatient"),
                dataset.get("PixelSpacing"),
                rows,
                columns,
            )
        ]
    return [
        _frame_from_attributes(
            f"instance {uid} frame {frame + 1}",
            _functional_group_value(dataset, frame, "PlanePositionSequence", "ImagePositionPatient"),
            _functional_group_value(dataset, frame, "PlaneOrientationSequence", "ImageOrientationPatient"),
            _functional_group_value(dataset, frame, "PixelMeasuresSequence", "PixelSpacing"),
            rows,
            columns,
            functional_groups=True,
        )
        for frame in range(frames)
    ]


def _split_localizers(datasets: Sequence[Dataset], series_uid: str) -> tuple[list[Dataset], tuple[str, ...]]:
    kept = [dataset for dataset in datasets if not is_localizer(dataset)]
    dropped = tuple(str(dataset.get("SOPInstanceUID", "?")) for dataset in datasets if is_localizer(dataset))
    if dropped:
        LOGGER.info("series %s: dropped %d localizer image(s) before stacking: %s", series_uid, len(dropped), dropped)
    return kept, dropped


def _single_series_uid(datasets: Sequence[Dataset]) -> str:
    uids = {str(dataset.get("SeriesInstanceUID", "")) for dataset in datasets}
    if len(uids) != 1:
        raise VolumeError(f"the datasets belong to {len(uids)} series ({sorted(uids)}); pass one series at a time")
    return uids.pop()


def _frame_of_reference(datasets: Sequence[Dataset], series_uid: str) -> str:
    uids = {str(dataset.get("FrameOfReferenceUID", "")) for dataset in datasets}
    if "" in uids:
        raise VolumeGeometryError(f"series {series_uid}: an image has no FrameOfReferenceUID")
    if len(uids) != 1:
        raise VolumeGeometryError(f"series {series_uid}: images lie in {len(uids)} frames of reference")
    return uids.pop()


def _to_ijk(hd_volume, stack: StackGeometry, series_uid: str) -> tuple[np.ndarray, np.ndarray]:
    """highdicom's (slice, row, column) volume and LPS affine -> our (i, j, k) array and RAS affine, with slices
    ordered as ``stack`` orders them (increasing along the normal). The two geometries must agree (highdicom's slice
    spacing may differ from our median interval within the 1 % regularity tolerance); the checked stack's affine
    is returned."""
    array = np.transpose(np.asarray(hd_volume.array, dtype=np.float32), (2, 1, 0))
    lps = np.asarray(hd_volume.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    if lps[:3, 2] @ stack.lps_affine[:3, 2] < 0:  # highdicom stacked the other way round
        array = array[:, :, ::-1]
        last = lps[:3, 3] + lps[:3, 2] * (array.shape[2] - 1)
        lps[:3, 2] = -lps[:3, 2]
        lps[:3, 3] = last
    expected = stack.lps_affine
    step, expected_step = lps[:3, 2], expected[:3, 2]
    agrees = (
        np.allclose(lps[:3, :2], expected[:3, :2], atol=1e-3)
        and np.allclose(lps[:3, 3], expected[:3, 3], atol=1e-2)
        and step @ expected_step / (np.linalg.norm(step) * np.linalg.norm(expected_step)) > 1 - 1e-6
        and abs(np.linalg.norm(step) / np.linalg.norm(expected_step) - 1) < 0.01
    )
    if not agrees:
        raise VolumeGeometryError(
            f"series {series_uid}: highdicom's volume geometry disagrees with the checked stack; refusing to guess"
        )
    return c_order_copy(array), stack.affine  # highdicom stacks (slice, row, column): read in blocks


def _volume_single_frames(datasets: Sequence[Dataset], stack: StackGeometry, series_uid: str):
    from highdicom import get_volume_from_series

    hd_volume = get_volume_from_series(
        list(datasets),
        dtype=np.float32,
        apply_real_world_transform=False,
        apply_modality_transform=None,
        apply_voi_transform=False,
        apply_presentation_lut=False,
        rtol=0.01,
        perpendicular_tol=1e-3,
        orientation_tol=1e-4,
    )
    return _to_ijk(hd_volume, stack, series_uid)


def _volume_multi_frame(dataset: Dataset, stack: StackGeometry, series_uid: str):
    from highdicom import Image

    image = Image.from_dataset(dataset, copy=False)
    hd_volume = image.get_volume(
        dtype=np.float32,
        apply_real_world_transform=False,
        apply_modality_transform=None,
        apply_voi_transform=False,
        apply_presentation_lut=False,
        rtol=0.01,
    )
    return _to_ijk(hd_volume, stack, series_uid)


def volume_from_series(
    datasets: Sequence[Dataset], tolerances: GeometryTolerances | None = None
) -> SeriesVolume:
    """Build the volume of one series (single-frame instances in any order, or one multi-frame instance).

    Raises ``VolumeGeometryError`` when the series is not one regular volume, ``VolumeError`` for other unusable
    input (several series, no pixel data).
    """
    if not datasets:
        raise VolumeError("no datasets: a series needs at least one instance")
    series_uid = _single_series_uid(datasets)
    kept, dropped = _split_localizers(datasets, series_uid)
    if not kept:
        raise VolumeGeometryError(f"series {series_uid} holds only localizer images")
    multi_frame = [dataset for dataset in kept if _number_of_frames(dataset) > 1]
    if multi_frame and len(kept) > 1:
        raise VolumeGeometryError(
            f"series {series_uid} has {len(kept)} instances of which {len(multi_frame)} are multi-frame; "
            "a multi-frame volume must be the only image of its series"
        )
    frames = [frame for dataset in kept for frame in frame_geometries(dataset)]
    try:
        stack = check_regular_stack(frames, tolerances)
    except VolumeGeometryError as error:
        raise VolumeGeometryError(f"series {series_uid} is not one regular volume: {error}") from None
    frame_of_reference = _frame_of_reference(kept, series_uid)
    try:
        if multi_frame:
            array, affine = _volume_multi_frame(kept[0], stack, series_uid)
        else:
            array, affine = _volume_single_frames(kept, stack, series_uid)
    except (ValueError, RuntimeError, AttributeError, KeyError) as error:
        if isinstance(error, VolumeError):
            raise
        raise VolumeGeometryError(f"series {series_uid} could not be read as a volume: {error}") from error
    first = kept[0]
    return SeriesVolume(
        array=array,
        affine=affine,
        series_instance_uid=series_uid,
        frame_of_reference_uid=frame_of_reference,
        modality=str(first.get("Modality", "")),
        series_description=str(first.get("SeriesDescription", "")),
        slice_spacing=stack.slice_spacing,
        dropped_instances=dropped,
    )
