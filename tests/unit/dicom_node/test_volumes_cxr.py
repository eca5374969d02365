"""Chest radiographs: modality and VOI LUT to 8 bits, MONOCHROME1 inverted, the frontal view chosen."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicom_node.volumes import NoFrontalViewError, NotRoutableError, VolumeError, frontal_radiograph, radiograph_to_uint8
from tests.support.synthetic_series import SyntheticStudy, cxr_dataset, write_datasets


def _ramp(height: int = 8, width: int = 16, top: int = 4095) -> np.ndarray:
    return np.linspace(0, top, height * width).round().astype(np.uint16).reshape(height, width)


def _dicom_linear_window(x: np.ndarray, centre: float, width: float, y_max: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 written out (LINEAR), output 0..y_max."""
    c, w = centre - 0.5, width - 1
    y = ((x - c) / w + 0.5) * y_max
    return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, y_max, y))


def test_without_voi_the_image_range_becomes_0_to_255() -> None:
    pixels = _ramp(top=1000) + 24
    image = radiograph_to_uint8(cxr_dataset(pixels))
    assert image.dtype == np.uint8 and image.shape == pixels.shape
    assert image.min() == 0 and image.max() == 255
    expected = np.rint((pixels.astype(float) - 24) / 1000 * 255).astype(np.uint8)
    assert np.array_equal(image, expected)


def test_window_is_applied_after_the_modality_lut() -> None:
    pixels = _ramp()
    ds = cxr_dataset(pixels, window=(1500.0, 1000.0), rescale=(2.0, -1000.0))
    image = radiograph_to_uint8(ds)
    values = pixels.astype(float) * 2.0 - 1000.0
    y_min, y_max = -1000.0, 4095 * 2.0 - 1000.0  # pydicom's output range for 12-bit stored values after rescale
    windowed = _dicom_linear_window(values, 1500.0, 1000.0, 1.0) * (y_max - y_min) + y_min
    expected = np.rint((windowed - y_min) / (y_max - y_min) * 255).astype(np.uint8)
    assert np.array_equal(image, expected)
    assert image[0, 0] == 0 and image[-1, -1] == 255


def test_voi_lut_sequence_is_used_and_scaled_from_its_entries() -> None:
    pixels = (np.arange(64, dtype=np.uint16) % 16).reshape(4, 16)
    lut = (np.arange(16, dtype=np.uint16) ** 2) * 4  # 0..900
    image = radiograph_to_uint8(cxr_dataset(pixels, voi_lut=lut, bits_stored=12))
    expected = np.rint(lut[pixels].astype(float) / 900.0 * 255).astype(np.uint8)
    assert np.array_equal(image, expected)


def test_monochrome1_is_inverted(tmp_path) -> None:
    pixels = _ramp()
    mono2 = radiograph_to_uint8(cxr_dataset(pixels, photometric="MONOCHROME2"))
    (path,) = write_datasets([cxr_dataset(pixels, photometric="MONOCHROME1")], tmp_path)
    mono1 = radiograph_to_uint8(pydicom.dcmread(path))
    assert np.array_equal(mono1, 255 - mono2)
    assert mono1[0, 0] == 255  # stored 0 is white in MONOCHROME1


def test_pa_is_preferred_over_ap_and_laterals_are_ignored() -> None:
    study = SyntheticStudy()
    lateral = cxr_dataset(_ramp(), view_position="LATERAL", study=study, series_number=1)
    ap = cxr_dataset(_ramp(), view_position="AP", study=study, series_number=2)
    pa = cxr_dataset(_ramp(top=2000), view_position="PA", study=study, series_number=3)
    chosen = frontal_radiograph([lateral, ap, pa])
    assert chosen.view_position == "PA" and chosen.sop_instance_uid == pa.SOPInstanceUID
    assert chosen.image.shape == (8, 16) and chosen.image.dtype == np.uint8
    assert frontal_radiograph([lateral, ap]).sop_instance_uid == ap.SOPInstanceUID


def test_a_study_without_a_frontal_view_is_not_routable() -> None:
    lateral = cxr_dataset(_ramp(), view_position="LATERAL")
    with pytest.raises(NoFrontalViewError, match=r"no frontal chest radiograph.*LATERAL \(1\)"):
        frontal_radiograph([lateral])
    assert issubclass(NoFrontalViewError, NotRoutableError)


def test_colour_images_are_refused() -> None:
    ds = cxr_dataset(_ramp())
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(VolumeError, match="needs a grayscale"):
        radiograph_to_uint8(ds)
