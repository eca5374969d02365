"""A volume read out frame by frame on its source images: what a SEG's frames hold.

For every source frame (each single-frame source instance in the order given, or each frame of one enhanced
multi-frame instance, placed by its functional groups), the frame is read out of a label volume on the source grid
(X, Y, Z = column, row, slice; affine voxel -> RAS mm): its Image Position (Patient) and Image Orientation (Patient)
are turned from LPS into RAS (x -> -x, y -> -y), mapped into voxel indices with the inverse affine, and must land on
whole voxels (within ``GRID_TOLERANCE_VOXELS``) with the in-plane steps along volume axes (any permutation or flip).
Anything else means the labels are not on the source grid and is refused: ``placement.labels_on_source_grid`` puts
them there first. Consecutive slices are cut in one strided view (a regular series, in either order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom import Dataset

from dicom_node.arrays import c_order_copy
from dicom_node.volumes.geometry import LPS_TO_RAS, FrameGeometry
from dicom_node.volumes.placement import source_frames

__all__ = ["GRID_TOLERANCE_VOXELS", "volume_on_source_frames"]

GRID_TOLERANCE_VOXELS = 1e-3
_LPS_TO_RAS = LPS_TO_RAS[:3, :3]


def _axis_step(step: np.ndarray, what: str) -> tuple[int, int]:
    rounded = np.round(step)
    if np.max(np.abs(step - rounded)) > GRID_TOLERANCE_VOXELS or np.count_nonzero(rounded) != 1 or np.max(
        np.abs(rounded)
    ) != 1:
        raise ValueError(
            f"labels are not on the source grid: one {what} of the source is {np.round(step, 4).tolist()} voxels; "
            "give the label volume on the source series' own grid"
        )
    axis = int(np.flatnonzero(rounded)[0])
    return axis, int(rounded[axis])


def _frame_window(shape: tuple[int, ...], to_voxel: np.ndarray, frame: FrameGeometry) -> tuple[tuple, int, int]:
    """Where a source frame lies in the label volume: the index (slices along the row and column axes, an int along
    the third) and the row and column axes."""
    orientation = np.asarray(frame.orientation, dtype=float)
    row_spacing, column_spacing = frame.pixel_spacing
    origin_ras = _LPS_TO_RAS @ np.asarray(frame.position, dtype=float)
    origin = to_voxel[:3, :3] @ origin_ras + to_voxel[:3, 3]
    column_axis, column_sign = _axis_step(
        to_voxel[:3, :3] @ _LPS_TO_RAS @ (orientation[:3] * column_spacing), "column step"
    )
    row_axis, row_sign = _axis_step(to_voxel[:3, :3] @ _LPS_TO_RAS @ (orientation[3:] * row_spacing), "row step")
    if column_axis == row_axis:
        raise ValueError("labels are not on the source grid: rows and columns map onto the same volume axis")
    start = np.round(origin)
    if np.max(np.abs(origin - start)) > GRID_TOLERANCE_VOXELS:
        raise ValueError(
            f"labels are not on the source grid: {frame.source} starts at voxel {np.round(origin, 3).tolist()}, "
            "between voxels"
        )
    first = [int(start[axis]) for axis in range(3)]
    last = list(first)
    last[column_axis] += column_sign * (frame.columns - 1)
    last[row_axis] += row_sign * (frame.rows - 1)
    if min(first + last) < 0 or any(max(a, b) >= n for a, b, n in zip(first, last, shape)):
        raise ValueError(
            f"labels of shape {tuple(shape)} do not cover {frame.source}: "
            "give the label volume on the source series' own grid"
        )
    window: list[slice | int] = list(first)
    for axis, sign in ((column_axis, column_sign), (row_axis, row_sign)):
        window[axis] = _steps(first[axis], last[axis], sign)
    return tuple(window), row_axis, column_axis


def _steps(first: int, last: int, step: int) -> slice:
    stop = last + step
    return slice(first, None if stop < 0 else stop, step)


def _stack_window(windows: list[tuple[tuple, int, int]]) -> tuple[tuple, tuple[int, int, int]] | None:
    """One index for all frames when they are consecutive slices of the volume (a regular series, in either
    order), with the axis order (slice, row, column); None otherwise."""
    first, row_axis, column_axis = windows[0]
    (slice_axis,) = {0, 1, 2} - {row_axis, column_axis}
    for window, rows, columns in windows:
        if (rows, columns) != (row_axis, column_axis) or window[row_axis] != first[row_axis] or (
            window[column_axis] != first[column_axis]
        ):
            return None
    positions = [window[slice_axis] for window, _, _ in windows]
    step = positions[1] - positions[0] if len(positions) > 1 else 1
    if step not in (1, -1) or any(b - a != step for a, b in zip(positions, positions[1:])):
        return None
    window = list(first)
    window[slice_axis] = _steps(positions[0], positions[-1], step)
    return tuple(window), (slice_axis, row_axis, column_axis)


def volume_on_source_frames(labels: np.ndarray, affine: np.ndarray, source_images: Sequence[Dataset]) -> np.ndarray:
    """``labels`` (X, Y, Z, on the source grid, ``affine`` -> RAS mm) as (frames, rows, columns), one frame per source
    frame (``source_frames``), in their order; ValueError when the labels are not on the source grid."""
    frames_geometry = source_frames(source_images)
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    windows = [_frame_window(labels.shape, to_voxel, frame) for frame in frames_geometry]
    stack = _stack_window(windows)
    if stack is not None:
        window, axes = stack
        return c_order_copy(np.transpose(labels[window], axes))
    frames = [labels[window] for window, _, _ in windows]  # each a view: its two axes in volume order
    frames = [frame.T if row_axis > column_axis else frame for frame, (_, row_axis, column_axis) in zip(frames, windows)]
    if len({frame.shape for frame in frames}) != 1:
        raise ValueError("source instances differ in Rows or Columns: give the instances of one regular series")
    stacked = np.empty((len(frames), *frames[0].shape), dtype=labels.dtype)  # C order, as highdicom reads it
    for index, frame in enumerate(frames):
        stacked[index] = frame
    return stacked
