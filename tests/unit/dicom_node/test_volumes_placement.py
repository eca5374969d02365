"""Results placed back on their source images (dicom_node.volumes.placement): the source grid is the volume's own,
labels on it pass through untouched, labels on another grid land on the source voxels they cover, and the source frame
nearest a point (RAS, as the engines give it) is found, in a single-frame and in a multi-frame series."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.volumes import (
    labels_on_source_grid,
    ras_to_lps_point,
    source_grid,
    source_image_at,
    volume_from_series,
)
from engines.resample import axial_slice_centre, reorient_to_ras
from tests.support.synthetic_series import SeriesGeometry, ct_series, enhanced_series, sample_ras

# Coronal, columns to the patient's right (2 mm), rows to the feet (1 mm), 3 mm slices running anterior.
CORONAL = SeriesGeometry(12, 10, 6, origin=(10.0, 6.0, 8.0), row_cosine=(-1.0, 0.0, 0.0),
                         column_cosine=(0.0, 0.0, -1.0), pixel_spacing=(1.0, 2.0), slice_spacing=3.0)


def _series(reverse: bool = False):
    values = sample_ras(CORONAL, lambda points: points[..., 0] * 10 + points[..., 2])
    return ct_series(values, CORONAL, reverse_order=reverse)


@pytest.mark.parametrize("reverse", [False, True], ids=["in order", "instances reversed"])
def test_the_source_grid_is_the_grid_volume_from_series_builds(reverse):
    series = _series(reverse)
    volume = volume_from_series(series)
    shape, affine = source_grid(series)
    assert shape == volume.array.shape == (10, 12, 6)
    np.testing.assert_allclose(affine, volume.affine, atol=1e-9)


def test_labels_on_the_source_grid_pass_through_and_others_land_on_the_voxels_they_cover():
    series = _series()
    shape, affine = source_grid(series)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:5, 3:7, 1:4] = 4
    same, same_affine = labels_on_source_grid(labels, affine, series)
    assert same is labels and np.array_equal(same_affine, affine)
    # the same labels on a 1 mm RAS grid that covers the series (as the BraTS expert gives them)
    oriented = reorient_to_ras(labels, affine)
    fine_shape = tuple((np.array(oriented.array.shape) - 1) * np.abs(np.diag(oriented.affine)[:3]).astype(int) + 1)
    fine_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine_affine[:3, 3] = oriented.affine[:3, 3]
    index = np.stack(np.meshgrid(*[np.arange(n) for n in fine_shape], indexing="ij"), axis=-1)
    back = np.rint((index - oriented.affine[:3, 3] + fine_affine[:3, 3]) / np.abs(np.diag(oriented.affine)[:3]))
    fine = oriented.array[tuple(back.astype(int).transpose(3, 0, 1, 2))]
    placed, placed_affine = labels_on_source_grid(fine, fine_affine, series)
    np.testing.assert_array_equal(placed, labels)
    np.testing.assert_allclose(placed_affine, affine)


def test_the_source_frame_nearest_a_point_and_the_middle_one_without_a_point():
    series = _series(reverse=True)
    by_y = {round(float(ds.ImagePositionPatient[1]), 3): ds for ds in series}
    assert set(by_y) == {6.0, 3.0, 0.0, -3.0, -6.0, -9.0}  # slices run anterior: LPS y falls
    # a RAS point at LPS y = -2.2: nearest the coronal slice at y = -3
    source, frame = source_image_at(series, np.array([4.0, 2.2, 1.0]))
    assert (source is by_y[-3.0], frame) == (True, None)
    assert source_image_at(series, None) == (series[len(series) // 2], None)
    np.testing.assert_array_equal(ras_to_lps_point([4.0, 2.2, 1.0]), [-4.0, -2.2, 1.0])


def test_in_a_multi_frame_series_the_nearest_frame_is_named_by_its_number():
    enhanced = enhanced_series(_series())
    frames_y = [float(item.PlanePositionSequence[0].ImagePositionPatient[1])
                for item in enhanced.PerFrameFunctionalGroupsSequence]
    source, frame = source_image_at([enhanced], np.array([0.0, -frames_y[4], 0.0]))
    assert source is enhanced and frame == 5


def test_the_centre_of_an_axial_slice_the_engines_showed_is_counted_from_the_feet():
    axial_flipped = np.array([[-0.5, 0, 0, 10], [0, -0.5, 0, 20], [0, 0, -2.0, 30], [0, 0, 0, 1]], dtype=float)
    centre = axial_slice_centre(axial_flipped, (4, 6, 8, 10), 0)  # slice 0 of the RAS-oriented grid: the lowest
    np.testing.assert_allclose(centre, [10 - 0.5 * 2.5, 20 - 0.5 * 3.5, 30 - 2.0 * 9])  # spatial axes: the last 3
