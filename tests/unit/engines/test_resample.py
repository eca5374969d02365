"""Reorientation to RAS and resampling onto one 1 mm grid keep every voxel at its place in patient space."""

from __future__ import annotations

import numpy as np
import pytest

from engines.resample import reorient_to_ras, resample_to_common_grid


def _world(affine: np.ndarray, index) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(index, dtype=float) + affine[:3, 3]


def test_reorient_to_ras_keeps_voxels_in_place() -> None:
    affine = np.array(  # a sagittal acquisition: i runs anterior-to-posterior, j superior-to-inferior, k to the right
        [[0.0, 0.0, 3.0, -40.0], [-0.5, 0.0, 0.0, 90.0], [0.0, -0.7, 0.0, 60.0], [0.0, 0.0, 0.0, 1.0]]
    )
    rng = np.random.default_rng(1)
    array = rng.random((6, 5, 4)).astype(np.float32)
    oriented = reorient_to_ras(array, affine)
    assert oriented.array.shape == (4, 6, 5)
    assert np.all(np.diag(oriented.affine)[:3] > 0)
    for index in np.ndindex(array.shape):
        world = _world(affine, index)
        new_index = np.linalg.solve(oriented.affine[:3, :3], world - oriented.affine[:3, 3])
        rounded = tuple(int(v) for v in np.rint(new_index))
        assert np.allclose(new_index, rounded)
        assert oriented.array[rounded] == array[index]


def test_resampling_keeps_a_bright_block_at_its_patient_position() -> None:
    # reference: 1 mm axial, LPS-like grid (i to the left, j posterior)
    ref_affine = np.array([[-1.0, 0, 0, 20.0], [0, -1.0, 0, 20.0], [0, 0, 1.0, -10.0], [0, 0, 0, 1]])
    reference = np.zeros((21, 21, 21), dtype=np.float32)
    # second: 2 mm sagittal-ish grid over the same region, different origin
    other_affine = np.array([[0, 0, 2.0, -2.0], [0, -2.0, 0, 20.0], [-2.0, 0, 0, 10.0], [0, 0, 0, 1]])
    other = np.zeros((11, 11, 11), dtype=np.float32)
    # a bright block around RAS (4, 6, 2), 6 mm wide, drawn in each volume through its own affine
    centre = np.array([4.0, 6.0, 2.0])
    for volume, affine in ((reference, ref_affine), (other, other_affine)):
        for index in np.ndindex(volume.shape):
            if np.all(np.abs(_world(affine, index) - centre) <= 3.0):
                volume[index] = 100.0
    result = resample_to_common_grid([(reference, ref_affine), (other, other_affine)])
    assert result.array.shape == (2, 21, 21, 21) and result.array.dtype == np.float32
    assert np.allclose(np.diag(result.affine), [1, 1, 1, 1])
    centre_index = tuple(int(v) for v in np.rint(np.linalg.solve(result.affine[:3, :3], centre - result.affine[:3, 3])))
    for channel in range(2):
        assert result.array[(channel, *centre_index)] == pytest.approx(100.0)
        bright = np.argwhere(result.array[channel] > 50.0)
        bright_world = bright @ result.affine[:3, :3].T + result.affine[:3, 3]
        assert np.allclose(bright_world.mean(axis=0), centre, atol=0.5)
    far_index = tuple(int(v) for v in np.rint(np.linalg.solve(result.affine[:3, :3], np.array([16.0, 16.0, -8.0]) - result.affine[:3, 3])))
    assert result.array[(1, *far_index)] == 0.0


def test_points_outside_a_volume_get_the_fill_value() -> None:
    small = np.ones((3, 3, 3), dtype=np.float32)
    shifted = np.eye(4)
    shifted[:3, 3] = 100.0
    result = resample_to_common_grid([(small, np.eye(4)), (small, shifted)], fill_value=-5.0)
    assert np.all(result.array[0] == 1.0)
    assert np.all(result.array[1] == -5.0)


def test_resampling_refuses_a_bad_affine() -> None:
    with pytest.raises(ValueError, match="4x4"):
        resample_to_common_grid([(np.zeros((2, 2, 2)), np.eye(3))])
