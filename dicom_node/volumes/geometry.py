"""Geometry of a stack of DICOM frames: the checks that make it one regular volume, and its RAS affine.

Conventions (shared with ``engines``; ``engines.experts.base.ExpertInput`` relies on them):

- a volume array has axes ``(i, j, k)`` = (column index, row index, slice index): ``array[i, j, k]`` is the pixel in
  column ``i`` and row ``j`` of the ``k``-th slice of the spatially sorted stack;
- its 4x4 ``affine`` maps ``(i, j, k, 1)`` to RAS millimetres ``(x, y, z, 1)``: +x towards the patient's right,
  +y anterior, +z superior. DICOM's patient coordinates are LPS (+x left, +y posterior, +z superior), so
  ``affine = diag(-1, -1, 1, 1) @ lps_affine``, where the LPS affine's columns are ``row_cosine * column_spacing``,
  ``column_cosine * row_spacing``, the slice step vector, and the ``ImagePositionPatient`` of slice 0.

So the voxel ``(i, j, k)`` lies at ``P_k + i * dc * r + j * dr * c`` in LPS, where ``P_k`` is the
``ImagePositionPatient`` of slice ``k``, ``r`` / ``c`` the row / column direction cosines (the two halves of
``ImageOrientationPatient``) and ``dr, dc`` = ``PixelSpacing`` (row spacing, column spacing); negate its x and y to get RAS.

The checks here only use numpy; they explain *why* a stack is not a volume so the error can say so.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dicom_node.volumes.errors import VolumeGeometryError

__all__ = [
    "LPS_TO_RAS",
    "FrameGeometry",
    "GeometryTolerances",
    "StackGeometry",
    "check_regular_stack",
    "lps_to_ras",
]

#: Multiply an LPS affine (or point) by this to get RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(lps_affine: np.ndarray) -> np.ndarray:
    """An affine mapping to DICOM patient coordinates (LPS) -> the same mapping to RAS."""
    return LPS_TO_RAS @ np.asarray(lps_affine, dtype=np.float64)


@dataclass(frozen=True)
class GeometryTolerances:
    """How far real data may stray from an ideal regular stack before it is refused.

    ``orientation``: largest difference in any direction cosine between frames; ``spacing_relative``: largest
    relative deviation of one slice interval from the median interval (highdicom's default, 1 %);
    ``spacing_absolute_mm``: the same as an absolute floor; ``tilt_degrees``: largest angle between the stacking
    direction and the slice normal (gantry tilt, sheared stacks); ``pixel_spacing_mm``: largest PixelSpacing difference.
    """

    orientation: float = 1e-4
    spacing_relative: float = 0.01
    spacing_absolute_mm: float = 1e-3
    tilt_degrees: float = 0.1
    pixel_spacing_mm: float = 1e-4


@dataclass(frozen=True)
class FrameGeometry:
    """Where one frame lies: from a single-frame instance or one frame of a multi-frame instance.

    ``pixel_spacing`` is (row spacing, column spacing) as in DICOM; ``source`` names the frame in messages
    (a SOP Instance UID or ``frame N``), never patient data.
    """

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    source: str


@dataclass(frozen=True)
class StackGeometry:
    """A checked regular stack: ``order`` sorts the input frames by position along the normal (slice k = frame
    ``order[k]``), ``lps_affine`` / ``affine`` (RAS) map (i, j, k) as described in the module docstring."""

    order: tuple[int, ...]
    slice_spacing: float
    lps_affine: np.ndarray

    @property
    def affine(self) -> np.ndarray:
        return lps_to_ras(self.lps_affine)


def _describe_counts(values: Sequence[object]) -> str:
    return ", ".join(f"{value} ({count} frames)" for value, count in Counter(values).most_common())


def _check_same_size(frames: Sequence[FrameGeometry]) -> None:
    sizes = [f"{frame.rows}x{frame.columns}" for frame in frames]
    if len(set(sizes)) > 1:
        raise VolumeGeometryError(f"frames differ in size (rows x columns): {_describe_counts(sizes)}")


def _check_same_orientation(frames: Sequence[FrameGeometry], tolerance: float) -> np.ndarray:
    orientations = np.array([frame.orientation for frame in frames], dtype=np.float64)
    if np.max(np.abs(orientations - orientations[0])) > tolerance:
        rounded = [tuple(round(value, 3) for value in frame.orientation) for frame in frames]
        raise VolumeGeometryError(
            "mixed orientations (ImageOrientationPatient): "
            f"{_describe_counts(rounded)}; a localizer or a reformat in another plane is in the series"
        )
    row, column = orientations[0, :3], orientations[0, 3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(column) - 1) > 1e-3 or abs(row @ column) > 1e-3:
        raise VolumeGeometryError(
            f"ImageOrientationPatient {tuple(orientations[0])} is not two orthogonal unit vectors"
        )
    return orientations[0]


def _check_same_pixel_spacing(frames: Sequence[FrameGeometry], tolerance: float) -> tuple[float, float]:
    spacings = np.array([frame.pixel_spacing for frame in frames], dtype=np.float64)
    if np.max(np.abs(spacings - spacings[0])) > tolerance:
        raise VolumeGeometryError(
            f"frames differ in PixelSpacing: {_describe_counts([frame.pixel_spacing for frame in frames])}"
        )
    if np.any(spacings[0] <= 0):
        raise VolumeGeometryError(f"PixelSpacing must be positive, got {tuple(spacings[0])}")
    return float(spacings[0, 0]), float(spacings[0, 1])


def _check_spacing(distances: np.ndarray, tolerances: GeometryTolerances) -> float:
    """``distances``: sorted positions along the normal; returns the regular slice spacing or raises."""
    intervals = np.diff(distances)
    duplicate_limit = max(tolerances.spacing_absolute_mm, 1e-2)
    duplicates = int(np.sum(intervals < duplicate_limit))
    if duplicates:
        raise VolumeGeometryError(
            f"{duplicates} frame(s) share a slice position with another frame: several stacks (phases, echoes, "
            "repeats) or duplicated instances are in one series; export one stack per series"
        )
    spacing = float(np.median(intervals))
    allowed = max(tolerances.spacing_relative * spacing, tolerances.spacing_absolute_mm)
    bad = np.flatnonzero(np.abs(intervals - spacing) > allowed)
    if bad.size:
        first = int(bad[0])
        interval = float(intervals[first])
        where = f"between slice positions {distances[first]:.2f} mm and {distances[first + 1]:.2f} mm along the normal"
        if interval > spacing:
            missing = round(interval / spacing) - 1
            kind = f"a gap of {interval:.2f} mm (about {missing} missing slice(s))" if missing >= 1 else (
                f"an interval of {interval:.2f} mm"
            )
        else:
            kind = f"an interval of {interval:.2f} mm"
        raise VolumeGeometryError(
            f"irregular slice spacing: {kind} {where}, where the usual spacing is {spacing:.2f} mm "
            f"({bad.size} irregular interval(s)); the series has missing or extra slices"
        )
    return spacing


def _check_no_tilt(positions: np.ndarray, normal: np.ndarray, tolerance_degrees: float) -> None:
    """Slices must stack along their normal: a sheared stack (gantry tilt) is refused."""
    offsets = positions - positions[0]
    along = offsets @ normal
    lengths = np.linalg.norm(offsets, axis=1)
    far = int(np.argmax(lengths))
    if lengths[far] == 0:
        return
    cosine = min(1.0, abs(float(along[far])) / float(lengths[far]))
    angle = math.degrees(math.acos(cosine))
    perpendicular = offsets - np.outer(along, normal)
    shear = float(np.max(np.linalg.norm(perpendicular, axis=1)))
    if angle > tolerance_degrees:
        raise VolumeGeometryError(
            f"slices are not stacked along their normal: the stack is sheared by {angle:.2f} degrees "
            f"({shear:.1f} mm in-plane shift across the stack), as from a gantry tilt; "
            "resample the series to an orthogonal grid on the scanner or choose another series"
        )


def check_regular_stack(
    frames: Sequence[FrameGeometry], tolerances: GeometryTolerances | None = None
) -> StackGeometry:
    """Check that ``frames`` form one regular volume and return its sorting and affine; raise
    ``VolumeGeometryError`` saying what is wrong otherwise.

    Checked: at least two frames; one size; one orientation (orthonormal); one pixel spacing; distinct positions;
    stacking along the normal (no gantry tilt); regular spacing (no gaps). Slices are sorted by increasing
    position along the normal ``row_cosine x column_cosine``, so the returned affine is right-handed in LPS.
    """
    limits = tolerances or GeometryTolerances()
    if len(frames) < 2:
        raise VolumeGeometryError(f"a volume needs at least 2 slices, the series has {len(frames)}")
    _check_same_size(frames)
    orientation = _check_same_orientation(frames, limits.orientation)
    row_spacing, column_spacing = _check_same_pixel_spacing(frames, limits.pixel_spacing_mm)
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, column_cosine)
    normal /= np.linalg.norm(normal)
    positions = np.array([frame.position for frame in frames], dtype=np.float64)
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    sorted_positions = positions[order]
    _check_no_tilt(sorted_positions, normal, limits.tilt_degrees)
    spacing = _check_spacing(distances[order], limits)
    lps = np.eye(4)
    lps[:3, 0] = row_cosine * column_spacing
    lps[:3, 1] = column_cosine * row_spacing
    lps[:3, 2] = normal * spacing
    lps[:3, 3] = sorted_positions[0]
    return StackGeometry(order=tuple(int(index) for index in order), slice_spacing=spacing, lps_affine=lps)
