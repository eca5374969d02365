"""``frames_on_source_grid`` and ``segment_pixels`` against independent per-voxel references, for random affines
(rotated, any axis permutation and flip), source windows, instance orders and label dtypes."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.results import LabelSegmentation, StructureSegment, frames_on_source_grid
from dicom_node.results.seg import segment_pixels

_LPS = np.diag([-1.0, -1.0, 1.0])


def _rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _instance(affine, v0, row_axis, row_sign, col_axis, col_sign, rows, cols, uid):
    e = np.eye(3)
    col_dir = affine[:3, :3] @ (col_sign * e[col_axis])
    row_dir = affine[:3, :3] @ (row_sign * e[row_axis])
    ds = Dataset()
    ds.SOPInstanceUID = uid
    ds.ImagePositionPatient = list(_LPS @ (affine[:3, :3] @ v0 + affine[:3, 3]))
    ds.ImageOrientationPatient = list(_LPS @ (col_dir / np.linalg.norm(col_dir))) + list(
        _LPS @ (row_dir / np.linalg.norm(row_dir)))
    ds.PixelSpacing = [float(np.linalg.norm(row_dir)), float(np.linalg.norm(col_dir))]
    ds.Rows, ds.Columns = rows, cols
    return ds


def _expected(labels, v0, row_axis, row_sign, col_axis, col_sign, rows, cols):
    out = np.empty((rows, cols), labels.dtype)
    for r in range(rows):
        for c in range(cols):
            v = np.array(v0)
            v[row_axis] += r * row_sign
            v[col_axis] += c * col_sign
            out[r, c] = labels[tuple(v)]
    return out


@pytest.mark.parametrize("seed", range(120))
def test_random_geometry_and_order(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 7, 3))
    dtype = rng.choice([np.uint8, np.int16, np.uint16, np.int32, np.int64])
    labels = rng.integers(0, 50, shape).astype(dtype)
    if rng.random() < 0.5:  # a non-contiguous volume
        labels = np.asfortranarray(labels)
    affine = np.eye(4)
    affine[:3, :3] = _rotation(rng) @ np.diag(rng.uniform(0.5, 3.0, 3)) if rng.random() < 0.5 else np.diag(
        rng.choice([-1, 1], 3) * rng.uniform(0.5, 3.0, 3))
    affine[:3, 3] = rng.uniform(-100, 100, 3)
    row_axis, col_axis = (int(a) for a in rng.permutation(3)[:2])
    (slice_axis,) = {0, 1, 2} - {row_axis, col_axis}
    row_sign, col_sign = (int(s) for s in rng.choice([-1, 1], 2))
    rows = int(rng.integers(1, shape[row_axis] + 1))
    cols = int(rng.integers(1, shape[col_axis] + 1))
    v0 = [0, 0, 0]
    v0[row_axis] = int(rng.integers(0, shape[row_axis] - rows + 1)) + (rows - 1 if row_sign < 0 else 0)
    v0[col_axis] = int(rng.integers(0, shape[col_axis] - cols + 1)) + (cols - 1 if col_sign < 0 else 0)
    positions = list(range(shape[slice_axis]))
    kind = rng.integers(0, 5)
    if kind == 1:
        positions = positions[::-1]
    elif kind == 2:
        positions = list(rng.permutation(positions))
    elif kind == 3:
        positions = [int(p) for p in rng.choice(positions, int(rng.integers(1, len(positions) + 1)))]
    elif kind == 4:
        positions = positions[int(rng.integers(0, len(positions))):]
    images, expected = [], []
    for i, p in enumerate(positions):
        v = list(v0)
        v[slice_axis] = int(p)
        args = (row_axis, row_sign, col_axis, col_sign, rows, cols)
        if rows == cols and rng.random() < 0.2:  # this instance transposed
            vt = list(v)
            args = (col_axis, col_sign, row_axis, row_sign, rows, cols)
            vt[row_axis], vt[col_axis] = v[row_axis], v[col_axis]
            v = vt
        images.append(_instance(affine, np.array(v, float), *args, f"1.2.3.{i}"))
        expected.append(_expected(labels, v, *args))
    segmentation = LabelSegmentation(labels, affine, (StructureSegment("liver", (1,)),))
    frames = frames_on_source_grid(segmentation, tuple(images))
    assert frames.dtype == labels.dtype and frames.flags.c_contiguous
    np.testing.assert_array_equal(frames, np.stack(expected))


@pytest.mark.parametrize("seed", range(60))
def test_segment_pixels_against_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([1, 3, 255, 256, 300]))
    ids = [int(i) for i in rng.choice(np.arange(1, 1000), n, replace=False)]
    segments = tuple(StructureSegment(f"s{k}", (i,)) for k, i in enumerate(ids))
    dtype = rng.choice([np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.uint64])
    info = np.iinfo(dtype)
    frames = rng.integers(max(info.min, -5), min(info.max, 1100), (2, 4, 5)).astype(dtype)
    pixels = segment_pixels(frames, segments)
    expected = np.zeros(frames.shape, np.uint16)
    for k, i in enumerate(ids, start=1):
        expected[frames == i] = k
    assert pixels.dtype == (np.uint8 if n < 256 else np.uint16)
    np.testing.assert_array_equal(pixels, expected)


@pytest.mark.parametrize("dtype, stray", [(np.int64, 2**40), (np.uint64, np.iinfo(np.uint64).max),
                                          (np.int32, 2**31 - 1), (np.int8, -128)])
def test_a_stray_label_far_beyond_the_segments_is_background(dtype, stray):
    frames = np.zeros((1, 4, 4), dtype)
    frames[0, 0, 0], frames[0, 1, 1] = stray, 5
    pixels = segment_pixels(frames, (StructureSegment("liver", (1,)), StructureSegment("right kidney", (5,))))
    assert pixels[0, 0, 0] == 0 and pixels[0, 1, 1] == 2 and pixels.sum() == 2


def test_no_source_instances_is_a_clear_error():
    segmentation = LabelSegmentation(np.zeros((2, 2, 2), np.uint8), np.eye(4), (StructureSegment("liver", (1,)),))
    with pytest.raises(ValueError, match="no source instances"):
        frames_on_source_grid(segmentation, ())
