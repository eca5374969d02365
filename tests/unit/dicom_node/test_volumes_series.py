"""Series -> volume: affine against hand-computed points, modality LUT, ordering, orientations, and refusals."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest

from dicom_node.volumes import VolumeError, VolumeGeometryError, volume_from_series
from tests.support.synthetic_series import (
    SeriesGeometry,
    axial_geometry,
    coronal_geometry,
    ct_series,
    enhanced_series,
    localizer_image,
    mr_series,
    sagittal_geometry,
    with_changes,
    write_datasets,
)


def _index_ramp(geometry: SeriesGeometry) -> np.ndarray:
    """Integer HU that encode the voxel index: value = 100 i + 10 j + k - 1000 (exact through any rescale)."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij")
    return (100 * i + 10 * j + k - 1000).astype(np.float64)


def _ras(point_lps) -> np.ndarray:
    x, y, z = point_lps
    return np.array([-x, -y, z])


def _world(affine: np.ndarray, index) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(index, dtype=float) + affine[:3, 3]


def test_affine_maps_voxels_to_their_image_position_patient_points() -> None:
    geometry = axial_geometry(6, 5, 4, pixel_spacing=(0.7, 0.9), slice_spacing=2.5, origin=(-100.0, -120.0, -50.0))
    volume = volume_from_series(ct_series(_index_ramp(geometry), geometry))
    assert volume.array.shape == (5, 6, 4) and volume.array.dtype == np.float32
    # hand-computed: voxel (i=3, j=2, k=1) = IPP of slice 1 + 3 columns * 0.9 mm along x + 2 rows * 0.7 mm along y (LPS)
    expected_lps = (-100.0 + 3 * 0.9, -120.0 + 2 * 0.7, -50.0 + 1 * 2.5)
    assert np.allclose(_world(volume.affine, (3, 2, 1)), _ras(expected_lps))
    assert np.allclose(_world(volume.affine, (0, 0, 0)), [100.0, 120.0, -50.0])
    assert volume.array[3, 2, 1] == 100 * 3 + 10 * 2 + 1 - 1000
    assert volume.voxel_spacing == pytest.approx((0.9, 0.7, 2.5))
    assert volume.slice_spacing == pytest.approx(2.5)
    assert volume.modality == "CT" and volume.dropped_instances == ()


def test_rescale_slope_and_intercept_give_hounsfield_units() -> None:
    geometry = axial_geometry(4, 4, 3)
    hu = _index_ramp(geometry) * 2.0  # even values: exact with slope 2
    datasets = ct_series(hu, geometry, rescale_slope=2.0, rescale_intercept=-3000.0)
    stored = datasets[0].pixel_array
    assert stored[0, 0] == (hu[0, 0, 0] + 3000) / 2  # what is stored differs from HU
    volume = volume_from_series(datasets)
    assert np.array_equal(volume.array, hu.astype(np.float32))


def test_reversed_instance_order_gives_the_same_volume_in_space() -> None:
    geometry = axial_geometry(5, 6, 7)
    values = _index_ramp(geometry)
    forward = volume_from_series(ct_series(values, geometry))
    backward = volume_from_series(ct_series(values, geometry, reverse_order=True))
    assert np.array_equal(forward.array, backward.array)
    assert np.allclose(forward.affine, backward.affine)


def test_slices_stored_from_head_to_feet_are_sorted_along_the_normal() -> None:
    geometry = SeriesGeometry(5, 6, 4, (0.0, 0.0, 0.0), pixel_spacing=(1.0, 1.0), slice_spacing=3.0,
                              slice_step=(0.0, 0.0, -3.0))  # each next slice is 3 mm inferior
    values = _index_ramp(geometry)
    volume = volume_from_series(ct_series(values, geometry))
    # the volume runs superior with k; every voxel keeps its position in space
    assert volume.affine[2, 2] == pytest.approx(3.0)
    for index in [(0, 0, 0), (2, 3, 1), (5, 4, 3)]:
        point = _world(geometry.ras_affine, index)
        new_index = np.rint(np.linalg.solve(volume.affine[:3, :3], point - volume.affine[:3, 3])).astype(int)
        assert volume.array[tuple(new_index)] == values[index]


@pytest.mark.parametrize("make_geometry", [sagittal_geometry, coronal_geometry], ids=["sagittal", "coronal"])
def test_non_axial_acquisitions_get_a_correct_affine(make_geometry) -> None:
    geometry = make_geometry(6, 7, 5, pixel_spacing=(1.1, 0.9), slice_spacing=1.5)
    values = _index_ramp(geometry)
    volume = volume_from_series(mr_series(values + 1000.0, geometry, description="T2 SAG"))
    assert np.allclose(volume.affine, geometry.ras_affine)
    row, column = np.asarray(geometry.row_cosine), np.asarray(geometry.column_cosine)
    expected_lps = np.asarray(geometry.origin) + 4 * 0.9 * row + 2 * 1.1 * column + 3 * 1.5 * np.cross(row, column)
    assert np.allclose(_world(volume.affine, (4, 2, 3)), _ras(expected_lps))
    assert volume.array[4, 2, 3] == values[4, 2, 3] + 1000.0


def test_enhanced_multi_frame_ct_gives_the_single_frame_volume() -> None:
    geometry = axial_geometry(6, 5, 4, pixel_spacing=(0.7, 0.9), slice_spacing=2.0)
    datasets = ct_series(_index_ramp(geometry), geometry, rescale_intercept=-1024.0)
    multi_frame = enhanced_series(datasets)
    assert int(multi_frame.NumberOfFrames) == 4
    single = volume_from_series(datasets)
    enhanced = volume_from_series([multi_frame])
    assert np.array_equal(enhanced.array, single.array)
    assert np.allclose(enhanced.affine, single.affine)


def test_enhanced_multi_frame_mr_read_back_from_a_file(tmp_path) -> None:
    geometry = sagittal_geometry(5, 6, 3)
    datasets = mr_series(_index_ramp(geometry) + 1000.0, geometry, reverse_order=True)
    (path,) = write_datasets([enhanced_series(datasets)], tmp_path)
    volume = volume_from_series([pydicom.dcmread(path)])
    assert np.allclose(volume.affine, geometry.ras_affine)
    assert np.array_equal(volume.array, (_index_ramp(geometry) + 1000.0).astype(np.float32))


def test_a_series_with_a_missing_slice_is_refused() -> None:
    geometry = axial_geometry(4, 4, 6, slice_spacing=2.5)
    datasets = ct_series(_index_ramp(geometry), geometry)
    del datasets[3]
    with pytest.raises(VolumeGeometryError, match=r"gap of 5\.00 mm \(about 1 missing slice"):
        volume_from_series(datasets)


def test_gantry_tilt_is_refused() -> None:
    tilt = np.radians(15.0)
    step = (0.0, 2.5 * np.tan(tilt), 2.5)  # each slice shifts along y: a sheared stack
    geometry = axial_geometry(4, 4, 5, slice_step=step)
    with pytest.raises(VolumeGeometryError, match=r"sheared by 15\.00 degrees.*gantry tilt"):
        volume_from_series(ct_series(_index_ramp(geometry), geometry, gantry_tilt=15.0))


def test_mixed_orientations_are_refused() -> None:
    geometry = axial_geometry(4, 4, 5)
    datasets = ct_series(_index_ramp(geometry), geometry)
    datasets.append(localizer_image(datasets, flagged=False))
    with pytest.raises(VolumeGeometryError, match="mixed orientations"):
        volume_from_series(datasets)


def test_a_localizer_filed_in_the_series_is_dropped_with_a_note(caplog) -> None:
    geometry = axial_geometry(4, 4, 5)
    datasets = ct_series(_index_ramp(geometry), geometry)
    scout = localizer_image(datasets, flagged=True)
    with caplog.at_level(logging.INFO, logger="dicom_node.volumes.series"):
        volume = volume_from_series([scout, *datasets])
    assert volume.dropped_instances == (scout.SOPInstanceUID,)
    assert volume.array.shape == (4, 4, 5)
    assert "dropped 1 localizer" in caplog.text


def test_duplicated_positions_are_refused_as_several_stacks() -> None:
    geometry = axial_geometry(4, 4, 4)
    datasets = ct_series(_index_ramp(geometry), geometry)
    datasets.append(with_changes(datasets[1], InstanceNumber=9))
    with pytest.raises(VolumeGeometryError, match="share a slice position.*several stacks"):
        volume_from_series(datasets)


def test_interleaved_second_stack_is_refused_as_irregular_spacing() -> None:
    geometry = axial_geometry(4, 4, 4, slice_spacing=4.0)
    datasets = ct_series(_index_ramp(geometry), geometry)
    shifted = with_changes(datasets[0], ImagePositionPatient=[-100.0, -120.0, -49.0])
    with pytest.raises(VolumeGeometryError, match="irregular slice spacing"):
        volume_from_series([*datasets, shifted])


def test_differing_image_sizes_are_refused() -> None:
    geometry = axial_geometry(4, 4, 3)
    datasets = ct_series(_index_ramp(geometry), geometry)
    other = axial_geometry(6, 6, 1, origin=(-100.0, -120.0, -42.5))
    odd = ct_series(_index_ramp(other), other)[0]
    odd.SeriesInstanceUID = datasets[0].SeriesInstanceUID
    odd.FrameOfReferenceUID = datasets[0].FrameOfReferenceUID
    with pytest.raises(VolumeGeometryError, match=r"differ in size.*4x4 \(3 frames\), 6x6 \(1 frames\)"):
        volume_from_series([*datasets, odd])


def test_datasets_of_two_series_are_refused() -> None:
    geometry = axial_geometry(4, 4, 2)
    first = ct_series(_index_ramp(geometry), geometry)
    second = ct_series(_index_ramp(geometry), geometry)
    with pytest.raises(VolumeError, match="belong to 2 series"):
        volume_from_series([*first, *second])


def test_a_single_image_is_not_a_volume() -> None:
    geometry = axial_geometry(4, 4, 1)
    with pytest.raises(VolumeGeometryError, match="at least 2 slices"):
        volume_from_series(ct_series(_index_ramp(geometry), geometry))


def test_scanner_rounding_in_positions_and_cosines_is_tolerated() -> None:
    from dicom_node.volumes import FrameGeometry, check_regular_stack

    rng = np.random.default_rng(3)
    cosines = (1.0, 1e-6, 0.0, -1e-6, 1.0, 0.0)
    frames = [
        FrameGeometry(
            position=(-100.0 + rng.uniform(-0.004, 0.004), -120.0, 1.25 * k + rng.uniform(-0.004, 0.004)),
            orientation=cosines, pixel_spacing=(0.7, 0.7), rows=4, columns=4, source=f"frame {k}",
        )
        for k in range(200)
    ]
    stack = check_regular_stack(frames[::-1])
    assert stack.slice_spacing == pytest.approx(1.25, abs=0.01)
    assert stack.order[0] == 199 and stack.order[-1] == 0
