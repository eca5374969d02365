"""The images the VLM sees and the expert overlay: window values, display orientation, overlay colours, legends."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import color_dict

from engines.images import (
    BRATS_LEGEND,
    OVERLAY_COLORS,
    LegendEntry,
    best_slice_index,
    brats_legend,
    ct_window,
    cxr_image,
    overlay_colors_for,
    render_overlay,
    slice_image,
    vista3d_legend,
)

LPS_AXIAL_AFFINE = np.array(  # a typical DICOM axial CT in RAS terms: i runs to the patient's left, j posterior
    [[-0.8, 0.0, 0.0, 200.0], [0.0, -0.8, 0.0, 180.0], [0.0, 0.0, 2.5, -300.0], [0.0, 0.0, 0.0, 1.0]]
)


def _expected_blend(color: str, grey: int) -> np.ndarray:
    """label2rgb's blend, written out: 0.3 * colour + 0.7 * grey/255, then *255 and truncation."""
    rgb = np.asarray(color_dict[color], dtype=np.float64)
    return ((0.3 * rgb + 0.7 * (grey / 255.0)) * 255).astype(np.uint8)


def test_ct_window_maps_hounsfield_units_exactly() -> None:
    hu = np.array([-1000.0, -150.0, 0.0, 50.0, 250.0, 3000.0], dtype=np.float32)
    assert ct_window(hu).tolist() == [0.0, 0.0, 95.625, 127.5, 255.0, 255.0]


def test_ct_slice_truncates_to_uint8_and_repeats_to_three_channels() -> None:
    volume = np.full((4, 5, 3), 50.0, dtype=np.float32)  # 127.5 -> 127
    image = slice_image(volume, np.eye(4), "CT")
    assert image.rgb.dtype == np.uint8 and image.rgb.shape == (5, 4, 3)
    assert np.all(image.rgb == 127)
    assert image.slice_index == 1


def test_mri_slice_is_min_max_over_the_whole_volume() -> None:
    volume = np.zeros((2, 2, 3), dtype=np.float32)
    volume[..., 0] = 100.0  # the extremes lie in other slices than the one shown
    volume[..., 2] = 500.0
    volume[..., 1] = 300.0
    image = slice_image(volume, np.eye(4), "MRI", slice_index=1)
    assert np.all(image.grey == 127)  # (300 - 100) / 400 * 255 = 127.5


def test_slice_index_outside_the_volume_is_refused() -> None:
    with pytest.raises(ValueError, match="outside the volume's 3 axial slices"):
        slice_image(np.zeros((2, 2, 3)), np.eye(4), "CT", slice_index=3)


@pytest.mark.parametrize(
    "affine",
    [np.eye(4), LPS_AXIAL_AFFINE],
    ids=["ras-grid", "dicom-lps-grid"],
)
def test_marker_in_the_patients_right_anterior_quadrant_shows_top_left(affine: np.ndarray) -> None:
    """Radiological display: anterior at the top, the patient's right on the viewer's left."""
    volume = np.full((40, 30, 5), -1000.0, dtype=np.float32)
    world_centre = affine[:3, :3] @ np.array([19.5, 14.5, 2.0]) + affine[:3, 3]
    for i, j in np.ndindex(40, 30):
        x, y, _ = affine[:3, :3] @ np.array([i, j, 2.0]) + affine[:3, 3]
        if x > world_centre[0] and y > world_centre[1]:  # right and anterior of the centre
            volume[i, j, :] = 1000.0
    shown = slice_image(volume, affine, "CT").grey
    height, width = shown.shape
    assert (height, width) == (30, 40)
    assert shown[: height // 3, : width // 3].min() == 255
    assert shown[height // 2 :, :].max() == 0 and shown[:, width // 2 :].max() == 0


def test_slice_index_counts_from_inferior_on_the_ras_grid() -> None:
    affine = np.diag([1.0, 1.0, -2.0, 1.0])  # slices stored superior to inferior
    volume = np.zeros((3, 3, 4), dtype=np.float32)
    volume[:, :, 3] = 200.0  # the most inferior slice as stored
    image = slice_image(volume, affine, "CT", slice_index=0)
    assert np.all(image.grey == 223)  # (200 + 150) / 400 * 255 = 223.125


def test_overlay_pixels_have_the_training_colours() -> None:
    volume = np.full((6, 4, 1), 50.0, dtype=np.float32)  # grey 127 everywhere
    labels = np.zeros((6, 4, 1), dtype=np.int16)
    labels[0, 0, 0] = 7  # RAS (0, 0): left-posterior corner -> display bottom-right
    labels[5, 3, 0] = 3  # RAS (5, 3): right-anterior corner -> display top-left
    labels[2, 1, 0] = 120
    names = {3: "pancreas", 7: "aorta", 120: "liver tumor"}
    overlay = render_overlay(volume, labels, np.eye(4), "CT", names)
    assert overlay.legend_pairs == (("red", "pancreas"), ("blue", "aorta"), ("yellow", "liver tumor"))
    assert overlay.rgb.dtype == np.uint8 and overlay.rgb.shape == (4, 6, 3)
    assert overlay.rgb[0, 0].tolist() == _expected_blend("red", 127).tolist()
    assert overlay.rgb[3, 5].tolist() == _expected_blend("blue", 127).tolist()
    assert overlay.rgb[2, 3].tolist() == _expected_blend("yellow", 127).tolist()  # RAS (2, 1) -> row 4-1-1, col 6-1-2
    assert overlay.rgb[1, 1].tolist() == [88, 88, 88]  # background: label2rgb's default black bg_color at alpha 0.3
    assert _expected_blend("red", 127).tolist() == [165, 88, 88]


def test_overlay_colours_only_count_labels_in_the_shown_slice() -> None:
    volume = np.zeros((3, 3, 3), dtype=np.float32)
    labels = np.zeros((3, 3, 3), dtype=np.int16)
    labels[1, 1, 0] = 2  # not in the middle slice
    labels[1, 1, 1] = 5
    overlay = render_overlay(volume, labels, np.eye(4), "MRI", {5: "spleen"})
    assert overlay.legend_pairs == (("red", "spleen"),)
    assert overlay.slice_index == 1


def test_overlay_refuses_unnamed_labels() -> None:
    labels = np.ones((2, 2, 1), dtype=np.int16)
    with pytest.raises(ValueError, match=r"no name for label ids \[1\]"):
        render_overlay(np.zeros((2, 2, 1)), labels, np.eye(4), "CT", {})


def test_colour_cycle_repeats_after_sixteen_labels() -> None:
    pairs = overlay_colors_for(range(1, 19))
    assert [color for _, color in pairs[:16]] == list(OVERLAY_COLORS)
    assert pairs[16] == (17, "red") and pairs[17] == (18, "blue")


def test_legend_texts() -> None:
    entries = (LegendEntry("red", 1, "liver"), LegendEntry("blue", 3, "spleen"))
    assert vista3d_legend(entries) == "red: liver, blue: spleen"
    assert vista3d_legend([("red", "liver")]) == "red: liver"
    assert brats_legend() == BRATS_LEGEND
    assert BRATS_LEGEND == "yellow and red: tumor core, only yellow: enhancing tumor, all colors: whole tumor"


def test_brats_labels_get_the_colours_the_legend_describes() -> None:
    assert overlay_colors_for([0, 4, 2, 1]) == [(1, "red"), (2, "blue"), (4, "yellow")]


def test_best_slice_counts_the_requested_labels_on_the_ras_grid() -> None:
    labels = np.zeros((4, 4, 5), dtype=np.int16)
    labels[:, :, 1] = 9  # many voxels of another label
    labels[0, 0:2, 3] = 4
    labels[0, 0, 2] = 4
    assert best_slice_index(labels, np.eye(4), [4]) == 3
    assert best_slice_index(labels, np.eye(4)) == 1
    flipped = np.diag([1.0, 1.0, -1.0, 1.0])
    assert best_slice_index(labels, flipped, [4]) == 1  # stored slice 3 is RAS slice 5 - 1 - 3
    assert best_slice_index(labels, np.eye(4), [77]) is None


def test_cxr_image_is_three_channel_uint8() -> None:
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = cxr_image(image)
    assert rgb.shape == (3, 4, 3) and np.array_equal(rgb[..., 2], image)
    with pytest.raises(ValueError, match="uint8"):
        cxr_image(image.astype(np.float32))
