"""CXR resize as in the training era (issue 14 point 12): torchxrayvision 1.2.4's ``nn.Upsample(mode="bilinear",
align_corners=False)``, no antialiasing, checked against a reference computation written here from that algorithm (each
output pixel i samples the input at ``(i + 0.5) * in / out - 0.5``, clamped at 0, linear between the two neighbours,
rows then columns), and the change antialiasing (torchxrayvision since January 2025) makes to the ensemble's scores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.experts.base import ExpertInput
from engines.experts.cxr import CxrExpert, preprocess_cxr
from engines.model_store.demo import write_cxr_demo


def _bilinear_axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, weight of the upper) per output position, half-pixel centres, no antialiasing."""
    scale = np.float32(size_in) / np.float32(size_out)  # float32 coordinates, as the float32 resize computes them
    source = (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    source = np.maximum(source, np.float32(0.0)).astype(np.float64)
    lower = np.floor(source).astype(int)
    lower = np.minimum(lower, size_in - 1)
    upper = np.minimum(lower + 1, size_in - 1)
    return lower, upper, source - lower


def reference_resize(image: np.ndarray, size: int) -> np.ndarray:
    rows_lo, rows_hi, rows_w = _bilinear_axis(image.shape[0], size)
    cols_lo, cols_hi, cols_w = _bilinear_axis(image.shape[1], size)
    rows = image[rows_lo] * (1 - rows_w)[:, None] + image[rows_hi] * rows_w[:, None]
    return rows[:, cols_lo] * (1 - cols_w)[None, :] + rows[:, cols_hi] * cols_w[None, :]


def _scaled_centre(image: np.ndarray) -> np.ndarray:
    scaled = (2.0 * (image.astype(np.float64) / 255.0) - 1.0) * 1024.0
    side = min(scaled.shape)
    top, left = scaled.shape[0] // 2 - side // 2, scaled.shape[1] // 2 - side // 2
    return scaled[top : top + side, left : left + side]


@pytest.mark.parametrize(("shape", "size"), [((1000, 1100), 224), ((300, 260), 512), ((97, 97), 224), ((2048, 2500), 512)])
def test_resize_is_plain_bilinear_as_the_reference_computation(shape, size):
    image = np.random.default_rng(3).integers(0, 256, size=shape, dtype=np.uint8)
    resized = preprocess_cxr(image, {size})[size][0, 0].numpy()
    expected = reference_resize(_scaled_centre(image), size)
    np.testing.assert_allclose(resized, expected, atol=1e-2)  # float32 blending, on a range of 2048


def stripes(height: int = 1600, width: int = 1600) -> np.ndarray:
    """Fine vertical stripes: what antialiasing averages away and plain bilinear samples."""
    image = np.zeros((height, width), np.uint8)
    image[:, ::3] = 255
    return image


def test_antialiasing_changes_the_pixels_the_models_see():
    plain = preprocess_cxr(stripes(), {224})[224]
    smoothed = preprocess_cxr(stripes(), {224}, antialias=True)[224]
    assert float((plain - smoothed).abs().mean()) > 100.0  # in the [-1024, 1024] scale
    assert torch.equal(plain, preprocess_cxr(stripes(), {224}, antialias=False)[224])  # the default is plain


def test_antialiasing_changes_the_ensemble_scores(tmp_path, monkeypatch):
    expert = CxrExpert(write_cxr_demo(tmp_path / "cxr"), backend="onnxruntime")
    try:
        plain = expert.run(ExpertInput(stripes())).scores
        import engines.experts.cxr as cxr

        original = cxr.preprocess_cxr
        monkeypatch.setattr(cxr, "preprocess_cxr", lambda image, sizes: original(image, sizes, antialias=True))
        smoothed = expert.run(ExpertInput(stripes())).scores
    finally:
        expert.release()
    differences = {name: abs(plain[name] - smoothed[name]) for name in plain}
    assert max(differences.values()) > 1e-3, differences
