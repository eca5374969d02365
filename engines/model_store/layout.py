"""The models directory, ``M3EDGE_HOME/models``, and what is installed in it.

Layout (each model folder carries a ``manifest.json`` with the sha256 of every file)::

    models/
      vista3d/                          MONAI bundle (model-zoo vista3d)
        configs/metadata.json           version; "m3edge": {"demo": true} on demo bundles
        configs/inference.json          network_def, resample_spacing, patch_size, inferer.overlap
        models/model.pt                 state dict
        models/image_encoder.encoder.onnx   m3edge's ONNX export of the encoder (ONNX Runtime, TensorRT)
        manifest.json
      brats_mri_segmentation/           MONAI bundle (model-zoo brats_mri_segmentation)
        configs/metadata.json, configs/inference.json (network_def, inferer.roi_size, inferer.overlap)
        models/model.pt
        models/model.onnx               m3edge's ONNX export of the whole SegResNet
        manifest.json
      cxr/                              the TorchXRayVision ensemble, converted
        ensemble.json                   per model: onnx file, torch file, resolution, pathologies (18, "" = absent)
        <model>.onnx                    8 files: densenet121-res224-{all,chex,mimic_ch,mimic_nb,nih,pc,rsna},
                                        resnet50-res512-all; input "image" (B,1,R,R), output "scores" (B,18)
        <model>.pt2                     the same network as a torch.export program (torch backend, no torchvision)
        manifest.json
      vila-m3-<name>/                   VILA-M3 checkpoints (vila-m3-demo/ from `m3edge models demo`)

Engines built by ``m3edge engines build`` live beside it, in ``M3EDGE_HOME/engines`` (see engine_cache).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engines.model_store.manifest import MANIFEST_NAME

__all__ = ["ModelsDirectory", "InstalledModel", "EXPERT_FOLDERS"]

EXPERT_FOLDERS = {"VISTA3D": "vista3d", "BRATS": "brats_mri_segmentation", "CXR": "cxr"}


@dataclass(frozen=True)
class InstalledModel:
    folder: str
    version: str
    demo: bool
    files: int


@dataclass(frozen=True)
class ModelsDirectory:
    root: Path

    @property
    def vista3d(self) -> Path:
        return self.root / EXPERT_FOLDERS["VISTA3D"]

    @property
    def brats(self) -> Path:
        return self.root / EXPERT_FOLDERS["BRATS"]

    @property
    def cxr(self) -> Path:
        return self.root / EXPERT_FOLDERS["CXR"]

    def vila(self, name: str) -> Path:
        return self.root / f"vila-m3-{name}"

    def installed(self) -> list[InstalledModel]:
        """Every model folder present, with its version and demo flag."""
        if not self.root.is_dir():
            return []
        found = []
        for folder in sorted(path for path in self.root.iterdir() if path.is_dir() and not path.name.startswith(".")):
            version, demo = _describe(folder)
            files = sum(1 for path in folder.rglob("*") if path.is_file())
            found.append(InstalledModel(folder.name, version, demo, files))
        return found


def _describe(folder: Path) -> tuple[str, bool]:
    metadata = folder / "configs" / "metadata.json"
    ensemble = folder / "ensemble.json"
    try:
        if metadata.is_file():
            data = json.loads(metadata.read_text(encoding="utf-8"))
            return str(data.get("version", "?")), bool(data.get("m3edge", {}).get("demo", False))
        if ensemble.is_file():
            data = json.loads(ensemble.read_text(encoding="utf-8"))
            return str(data.get("version", "?")), bool(data.get("demo", False))
        manifest = folder / MANIFEST_NAME
        if manifest.is_file():
            data = json.loads(manifest.read_text(encoding="utf-8"))
            return str(data.get("version", "?")), bool(data.get("demo", folder.name.endswith("-demo")))
    except json.JSONDecodeError:
        return "unreadable", False
    return "?", folder.name.endswith("-demo")
