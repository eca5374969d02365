"""``m3edge models demo``: tiny random-weight models in the real on-disk formats, so everything runs on a CPU.

VISTA3D and BraTS are written as MONAI bundles (the keys the real bundles use, at the same places) whose
``network_def`` builds a smaller network: ``vista3d132(encoder_embed_dim=...)`` and a SegResNet with fewer initial
filters; the CXR ensemble is eight small ONNX networks with TorchXRayVision's names, resolutions and pathology
lists. Every demo model says so (``"m3edge": {"demo": true}`` / ``"demo": true``), and so does every result.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from engines.experts.labels import CXR_MODEL_PATHOLOGIES, CXR_MODEL_RESOLUTION, CXR_MODELS, CXR_PATHOLOGY_GROUPS
from engines.experts.labels import vista3d_label_names
from engines.model_store.bundle_exports import export_brats_network, export_vista3d_encoder
from engines.model_store.cxr_ensemble import write_cxr_ensemble
from engines.model_store.layout import ModelsDirectory
from engines.model_store.manifest import write_manifest

__all__ = ["write_demo_models", "write_vista3d_demo", "write_brats_demo", "write_cxr_demo", "tiny_cxr_network"]

DEMO_NOTE = "m3edge demo: random weights, for trying the pipeline only; every result made with it says DEMO"


def _fresh(directory: Path) -> Path:
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "configs").mkdir(parents=True)
    (directory / "models").mkdir()
    return directory


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=4) + "\n", encoding="utf-8")


def write_vista3d_demo(
    directory: Path, encoder_embed_dim: int = 8, patch_size: Sequence[int] = (128, 128, 128), seed: int = 0
) -> Path:
    """A VISTA3D bundle whose network is ``vista3d132(encoder_embed_dim=...)`` with random weights."""
    from monai.networks.nets import vista3d132

    directory = _fresh(Path(directory))
    torch.manual_seed(seed)
    network = vista3d132(encoder_embed_dim=encoder_embed_dim, in_channels=1)
    torch.save(network.state_dict(), directory / "models" / "model.pt")
    labels = {str(key): value for key, value in vista3d_label_names().items()}
    _write_json(
        directory / "configs" / "metadata.json",
        {
            "version": "0.5.4-demo",
            "description": DEMO_NOTE,
            "m3edge": {"demo": True},
            "network_data_format": {"outputs": {"pred": {"channel_def": labels}}},
        },
    )
    _write_json(
        directory / "configs" / "inference.json",
        {
            "input_channels": 1,
            "encoder_embed_dim": encoder_embed_dim,
            "resample_spacing": [1.5, 1.5, 1.5],
            "patch_size": [int(v) for v in patch_size],
            "network_def": "$monai.networks.nets.vista3d132(encoder_embed_dim=@encoder_embed_dim, in_channels=@input_channels)",
            "inferer": {"roi_size": "@patch_size", "overlap": 0.3, "sw_batch_size": 1},
        },
    )
    export_vista3d_encoder(directory)
    write_manifest(directory, "vista3d")
    return directory


def write_brats_demo(
    directory: Path, init_filters: int = 8, roi_size: Sequence[int] = (240, 240, 160), seed: int = 0
) -> Path:
    """A brats_mri_segmentation bundle: the bundle's SegResNet layout with ``init_filters`` and random weights."""
    from monai.networks.nets import SegResNet

    directory = _fresh(Path(directory))
    definition = {
        "_target_": "SegResNet",
        "blocks_down": [1, 2, 2, 4],
        "blocks_up": [1, 1, 1],
        "init_filters": init_filters,
        "in_channels": 4,
        "out_channels": 3,
        "dropout_prob": 0.2,
    }
    torch.manual_seed(seed)
    network = SegResNet(**{key: value for key, value in definition.items() if key != "_target_"})
    torch.save(network.state_dict(), directory / "models" / "model.pt")
    _write_json(
        directory / "configs" / "metadata.json",
        {
            "version": "0.5.2-demo",
            "description": DEMO_NOTE,
            "m3edge": {"demo": True},
            "image_classes": "4 channel data, T1c, T1, T2, FLAIR at 1x1x1 mm",
            "label_classes": "3 channel data, channel 0 for Tumor core, channel 1 for Whole tumor, channel 2 for Enhancing tumor",
        },
    )
    _write_json(
        directory / "configs" / "inference.json",
        {
            "network_def": definition,
            "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [int(v) for v in roi_size], "sw_batch_size": 1, "overlap": 0.5},
        },
    )
    export_brats_network(directory)
    write_manifest(directory, "brats_mri_segmentation")
    return directory


class _Scores(torch.nn.Module):
    """Logits -> sigmoid scores, the form TorchXRayVision models return."""

    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(image))


def tiny_cxr_network(name: str) -> torch.nn.Module:
    """A small stand-in network with a TorchXRayVision model's contract: (B, 1, R, R) in [-1024, 1024] -> (B, 18)."""
    from monai.networks.nets import DenseNet, ResNet

    if name.startswith("resnet50"):
        body = ResNet("basic", [1, 1, 1, 1], [4, 8, 8, 8], spatial_dims=2, n_input_channels=1, num_classes=18)
    else:
        body = DenseNet(spatial_dims=2, in_channels=1, out_channels=18, init_features=8, growth_rate=4, block_config=(1, 1, 1, 1))
    # Inputs span +-1024: scale once so the random network's scores do not all saturate at 0 or 1.
    return _Scores(torch.nn.Sequential(_Scale(1.0 / 1024.0), body)).eval()


class _Scale(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def write_cxr_demo(directory: Path, seed: int = 0) -> Path:
    """The eight-model ensemble as small random networks, exported like `models import` exports the real ones."""
    torch.manual_seed(seed)
    networks = {name: tiny_cxr_network(name) for name in CXR_MODELS}
    return write_cxr_ensemble(
        Path(directory),
        networks,
        resolutions=CXR_MODEL_RESOLUTION,
        pathologies=CXR_MODEL_PATHOLOGIES,
        groups=CXR_PATHOLOGY_GROUPS,
        version="demo",
        demo=True,
    )


def write_demo_models(models_dir: Path, vila: bool = True) -> dict[str, Path]:
    """Write every demo model into ``models_dir`` (see ``layout``). Returns folder name -> path."""
    layout = ModelsDirectory(Path(models_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    written = {
        "vista3d": write_vista3d_demo(layout.vista3d),
        "brats_mri_segmentation": write_brats_demo(layout.brats),
        "cxr": write_cxr_demo(layout.cxr),
    }
    if vila:
        path = write_vila_demo(layout)
        if path is not None:
            written[path.name] = path
    return written


def write_vila_demo(layout: ModelsDirectory) -> Path | None:
    """The tiny VILA-M3 checkpoint, when ``engines.vlm.demo.write_demo_checkpoint`` exists; None otherwise."""
    try:
        from engines.vlm.demo import write_demo_checkpoint
    except ImportError:
        return None
    directory = layout.vila("demo")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    written = Path(write_demo_checkpoint(directory))
    write_manifest(written, written.name)
    return written
