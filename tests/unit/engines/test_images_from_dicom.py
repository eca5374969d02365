"""From a DICOM series to the image the VLM sees: the patient's right-anterior shows at the top left (radiological
display), whatever the acquisition's slice order."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.volumes import volume_from_series
from engines.images import render_overlay, slice_image
from tests.support.synthetic_series import axial_geometry, ct_series, sample_ras


def _marker_hu(points: np.ndarray) -> np.ndarray:
    """Air, with a 1000 HU marker where the patient is right (RAS x > 0) and anterior (RAS y > 0)."""
    return np.where((points[..., 0] > 0) & (points[..., 1] > 0), 1000.0, -1000.0)


@pytest.mark.parametrize("reverse_order", [False, True], ids=["feet-first-order", "head-first-order"])
def test_right_anterior_marker_is_top_left_in_the_ct_slice(reverse_order: bool) -> None:
    geometry = axial_geometry(20, 24, 3, pixel_spacing=(1.0, 1.0), origin=(-12.0, -10.0, 0.0))  # centred on x=y=0
    series = ct_series(sample_ras(geometry, _marker_hu), geometry, reverse_order=reverse_order)
    volume = volume_from_series(series)
    shown = slice_image(volume.array, volume.affine, "CT").grey
    assert shown.shape == (20, 24)
    assert np.all(shown[:10, :12] == 255)  # top-left quadrant: right-anterior
    assert np.all(shown[10:, :] == 0) and np.all(shown[:, 12:] == 0)


def test_overlay_from_dicom_marks_the_labelled_side() -> None:
    geometry = axial_geometry(8, 8, 3, pixel_spacing=(1.0, 1.0), origin=(-4.0, -4.0, 0.0))
    volume = volume_from_series(ct_series(np.full(geometry.shape, 50.0), geometry))
    labels = np.zeros(volume.array.shape, dtype=np.int16)
    world = np.stack(np.meshgrid(*[np.arange(n) for n in labels.shape], indexing="ij"), -1) @ volume.affine[:3, :3].T
    world += volume.affine[:3, 3]
    labels[world[..., 0] > 0] = 5  # the patient's right half: the viewer's left half
    overlay = render_overlay(volume.array, labels, volume.affine, "CT", {5: "liver"})
    assert overlay.legend_pairs == (("red", "liver"),)
    assert np.all(overlay.rgb[:, :4] == [165, 88, 88]) and np.all(overlay.rgb[:, 4:] == [88, 88, 88])
