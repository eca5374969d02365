"""Geometry engines need: reorient a volume to RAS, resample volumes onto one 1 mm RAS grid (the BraTS expert's
input), and say where an axial slice they showed lies (RAS mm). Nothing here knows DICOM or LPS: that is
``dicom_node.volumes``.

Conventions (the same as ``dicom_node.volumes`` and ``engines.experts.base.ExpertInput``):

- a volume is a numpy array whose first three axes are voxel indices ``(i, j, k)``;
- its 4x4 ``affine`` maps ``(i, j, k, 1)`` to RAS millimetres ``(x, y, z, 1)``: +x towards the patient's right,
  +y anterior, +z superior (NIfTI's RAS+, i.e. DICOM's LPS with x and y negated).

"RAS orientation" (what MONAI's ``Orientation(axcodes="RAS")`` does, and what section 6 of the protocol asks before
a slice is shown) permutes and flips the voxel axes, without interpolation, so that index ``i`` grows towards the
right, ``j`` anterior and ``k`` superior, as nearly as the acquisition's axes allow.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "OrientedVolume",
    "ResampledVolumes",
    "axial_slice_centre",
    "check_affine",
    "ras_axis_order",
    "reorient_to_ras",
    "resample_to_common_grid",
]


@dataclass(frozen=True)
class OrientedVolume:
    """A volume reoriented to RAS: ``array`` (X, Y, Z, ...) and its new ``affine``."""

    array: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class ResampledVolumes:
    """Several volumes on one grid: ``array`` (C, X, Y, Z) float32, one ``affine`` (voxel -> RAS mm)."""

    array: np.ndarray
    affine: np.ndarray


def check_affine(affine: np.ndarray, name: str = "affine") -> np.ndarray:
    """Return ``affine`` as a float64 4x4 array, or raise ValueError saying what is wrong with it."""
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 matrix (voxel index -> RAS mm), got shape {matrix.shape}")
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"{name} must have a last row of (0, 0, 0, 1), got {matrix[3].tolist()}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-9:
        raise ValueError(f"{name} is singular: its voxel axes do not span 3D space")
    return matrix


def ras_axis_order(affine: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """For each RAS world axis, the voxel axis closest to it and whether that voxel axis runs backwards.

    Returns ``(permutation, flips)``: output axis ``w`` of the reoriented volume is input axis ``permutation[w]``,
    reversed when ``flips[w]``. Of the six assignments of voxel axes to world axes, the one whose direction
    cosines line up best is chosen (so an oblique acquisition goes to its nearest orthogonal orientation).
    """
    matrix = check_affine(affine)
    directions = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0, keepdims=True)
    best = max(
        itertools.permutations(range(3)),
        key=lambda perm: sum(abs(directions[world, perm[world]]) for world in range(3)),
    )
    flips = tuple(bool(directions[world, best[world]] < 0) for world in range(3))
    return (best[0], best[1], best[2]), (flips[0], flips[1], flips[2])


def reorient_to_ras(array: np.ndarray, affine: np.ndarray) -> OrientedVolume:
    """Permute and flip the first three axes of ``array`` so they run R, A, S; return it with its new affine.

    Trailing axes (channels) are kept. No voxel values change: this is an index relabelling, and the new affine
    maps each voxel to the same point in space as before.
    """
    matrix = check_affine(affine)
    volume = np.asarray(array)
    if volume.ndim < 3:
        raise ValueError(f"a volume needs at least 3 axes (X, Y, Z), got shape {volume.shape}")
    permutation, flips = ras_axis_order(matrix)
    trailing = tuple(range(3, volume.ndim))
    oriented = np.transpose(volume, (*permutation, *trailing))
    index_map = np.zeros((4, 4))  # new index (homogeneous) -> old index
    index_map[3, 3] = 1.0
    for new_axis, old_axis in enumerate(permutation):
        if flips[new_axis]:
            oriented = np.flip(oriented, axis=new_axis)
            index_map[old_axis, new_axis] = -1.0
            index_map[old_axis, 3] = volume.shape[old_axis] - 1
        else:
            index_map[old_axis, new_axis] = 1.0
    return OrientedVolume(array=np.ascontiguousarray(oriented), affine=matrix @ index_map)


def _common_grid(reference_shape: Sequence[int], reference_affine: np.ndarray, spacing_mm: float):
    """A RAS-aligned grid of ``spacing_mm`` voxels covering the reference volume's bounding box."""
    shape = np.asarray(reference_shape[:3])
    corners = np.array(list(itertools.product(*[(0.0, float(n - 1)) for n in shape])))
    world = corners @ reference_affine[:3, :3].T + reference_affine[:3, 3]
    low, high = world.min(axis=0), world.max(axis=0)
    out_shape = tuple(int(n) for n in np.floor((high - low) / spacing_mm + 1e-6).astype(int) + 1)
    out_affine = np.eye(4)
    out_affine[:3, :3] = np.diag([spacing_mm] * 3)
    out_affine[:3, 3] = low
    return out_shape, out_affine


def _normalised_theta(
    source_affine: np.ndarray, source_shape: Sequence[int], out_affine: np.ndarray, out_size: np.ndarray
) -> np.ndarray:
    """The (3, 4) ``theta`` of ``torch.nn.functional.affine_grid`` (align_corners=True) that maps the output
    grid's normalised coordinates to the source volume's, for (1, 1, X, Y, Z) tensors.

    Torch orders normalised coordinates (last axis, middle, first) = (k, j, i); with ``index = (u + 1) (n - 1) / 2``
    per axis, the source index is ``inv(source_affine) @ out_affine`` applied to the output index.
    """
    source_size = np.asarray(source_shape, dtype=np.float64)
    out_half = np.diag(np.append((out_size - 1.0) / 2.0, 1.0))
    out_half[:3, 3] = (out_size - 1.0) / 2.0  # normalised u -> output index
    source_scale = np.diag(np.append(2.0 / np.maximum(source_size - 1.0, 1.0), 1.0))
    source_scale[:3, 3] = -1.0  # source index -> normalised v
    index_ijk = source_scale @ np.linalg.inv(source_affine) @ out_affine @ out_half  # u_ijk -> v_ijk
    reverse = np.eye(4)[[2, 1, 0, 3]]
    return (reverse @ index_ijk @ reverse)[:3].astype(np.float32)


def resample_to_common_grid(
    volumes: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    reference: int = 0,
    spacing_mm: float = 1.0,
    fill_value: float = 0.0,
) -> ResampledVolumes:
    """Resample ``(array, affine)`` volumes (same frame of reference) onto one ``spacing_mm`` RAS grid.

    The grid is axis-aligned in RAS (index i grows to the right, j anterior, k superior), has ``spacing_mm`` voxels
    and covers the bounding box of ``volumes[reference]`` (for BraTS: the T1c). Every volume is sampled at the grid's
    voxel centres through its own affine with trilinear interpolation (torch ``grid_sample``, ``align_corners=True``
    in index space); points outside a volume get ``fill_value``. Returns (C, X, Y, Z) float32 in input order, and the
    grid's affine. This is what the BraTS expert takes (protocol section 7: four sequences, 1 mm).
    """
    import torch
    import torch.nn.functional as functional

    if not volumes:
        raise ValueError("resample_to_common_grid needs at least one (array, affine) volume")
    if not 0 <= reference < len(volumes):
        raise ValueError(f"reference must index one of the {len(volumes)} volumes, got {reference}")
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    checked = []
    for position, (array, affine) in enumerate(volumes):
        values = np.asarray(array, dtype=np.float32)
        if values.ndim != 3:
            raise ValueError(f"volume {position} must be 3D (X, Y, Z), got shape {values.shape}")
        checked.append((values, check_affine(affine, f"affine of volume {position}")))

    out_shape, out_affine = _common_grid(checked[reference][0].shape, checked[reference][1], spacing_mm)
    out_size = np.asarray(out_shape, dtype=np.float64)
    channels = []
    for values, affine in checked:
        theta = _normalised_theta(affine, values.shape, out_affine, out_size)
        grid = functional.affine_grid(
            torch.from_numpy(theta).unsqueeze(0), [1, 1, *out_shape], align_corners=True
        )
        source = torch.from_numpy(values - np.float32(fill_value)).unsqueeze(0).unsqueeze(0)
        sampled = functional.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        channels.append(sampled[0, 0].numpy() + np.float32(fill_value))
    return ResampledVolumes(array=np.stack(channels).astype(np.float32, copy=False), affine=out_affine)


def axial_slice_centre(affine: np.ndarray, shape: Sequence[int], axial_index: int) -> np.ndarray:
    """The centre (RAS mm) of axial slice ``axial_index`` of a volume of ``shape`` (its last three axes) once
    reoriented to RAS (``reorient_to_ras``: index 0 is the slice nearest the feet), e.g. the slice the VLM was shown."""
    permutation, flips = ras_axis_order(affine)
    spatial = [int(n) for n in shape[-3:]]
    centre = [(n - 1) / 2.0 for n in spatial]
    axis = permutation[2]
    centre[axis] = (spatial[axis] - 1 - axial_index) if flips[2] else axial_index
    return (check_affine(affine) @ np.array([*centre, 1.0]))[:3]
