"""ONNX exports of the bundles' networks, written next to their weights (``models/<part>.onnx``).

- VISTA3D: ``image_encoder.encoder`` only (input ``image`` (B, 1, X, Y, Z), outputs ``features_0..4``), dynamic
  batch and spatial axes (spatial sizes must stay multiples of 16).
- BraTS: the whole SegResNet (input ``image`` (B, 4, X, Y, Z), output ``logits`` (B, 3, X, Y, Z)), dynamic batch
  and spatial axes (multiples of 8).
"""

from __future__ import annotations

from pathlib import Path

import torch

from engines.experts.bundle import MonaiBundle
from engines.onnx_export import export_onnx

__all__ = ["export_vista3d_encoder", "export_brats_network"]

_SPATIAL = {2: "x", 3: "y", 4: "z"}


def export_vista3d_encoder(bundle_dir: Path, example_size: int = 32) -> Path:
    from engines.experts.vista3d import ENCODER_LEVELS, ENCODER_PART

    bundle = MonaiBundle(Path(bundle_dir))
    encoder = bundle.load_network().image_encoder.encoder
    outputs = [f"features_{level}" for level in range(ENCODER_LEVELS)]
    axes = {"image": {0: "batch", **_SPATIAL}}
    axes.update({name: {0: "batch", 2: f"{name}_x", 3: f"{name}_y", 4: f"{name}_z"} for name in outputs})
    example = torch.rand(1, 1, example_size, example_size, example_size)
    return export_onnx(encoder, [example], bundle.onnx_path(ENCODER_PART), ["image"], outputs, axes)


def export_brats_network(bundle_dir: Path, example_size: int = 32) -> Path:
    bundle = MonaiBundle(Path(bundle_dir))
    network = bundle.load_network()
    axes = {"image": {0: "batch", **_SPATIAL}, "logits": {0: "batch", **_SPATIAL}}
    example = torch.rand(1, 4, example_size, example_size, example_size)
    return export_onnx(network, [example], bundle.onnx_path("model"), ["image"], ["logits"], axes)
