"""Writing the CXR ensemble folder: one ONNX + one torch.export file per model, and ``ensemble.json``.

Used by the demo writer (small random networks) and by the TorchXRayVision conversion (the real eight models).
Each network takes ``image`` (B, 1, R, R) already scaled to [-1024, 1024] and at its own resolution R, and returns
``scores`` (B, 18) as the TorchXRayVision model returns them. Only the batch axis is dynamic: the resize to R
happens in preprocessing, as TorchXRayVision's own ``fix_resolution`` does before the network.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from engines.experts.labels import CXR_PATHOLOGIES
from engines.model_store.manifest import write_manifest
from engines.onnx_export import export_onnx

__all__ = ["write_cxr_ensemble", "ENSEMBLE_FILE"]

ENSEMBLE_FILE = "ensemble.json"


def write_cxr_ensemble(
    directory: Path,
    networks: Mapping[str, torch.nn.Module],
    resolutions: Mapping[str, int],
    pathologies: Mapping[str, Sequence[str]],
    groups: Mapping[str, Sequence[str]],
    version: str,
    demo: bool,
) -> Path:
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    models = []
    for name, network in networks.items():
        labels = list(pathologies[name])
        if len(labels) != len(CXR_PATHOLOGIES) or any(label not in ("", *CXR_PATHOLOGIES) for label in labels):
            raise ValueError(f"{name}: pathologies must be 18 entries aligned to TorchXRayVision's default_pathologies")
        resolution = int(resolutions[name])
        network = network.eval()
        example = torch.zeros(2, 1, resolution, resolution)
        export_onnx(network, [example], directory / f"{name}.onnx", ["image"], ["scores"], {"image": {0: "batch"}, "scores": {0: "batch"}})
        batch = torch.export.Dim("batch", min=1, max=64)
        program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, directory / f"{name}.pt2")
        models.append(
            {"name": name, "onnx": f"{name}.onnx", "torch": f"{name}.pt2", "resolution": resolution, "pathologies": labels}
        )
    digest = hashlib.sha256()
    for entry in models:
        digest.update((directory / entry["onnx"]).read_bytes())
    ensemble = {
        "format": "m3edge-cxr-ensemble/1",
        "version": f"{version}+{digest.hexdigest()[:12]}",
        "weights_sha256": digest.hexdigest(),
        "demo": demo,
        "pathologies": list(CXR_PATHOLOGIES),
        "pathology_groups": {key: list(value) for key, value in groups.items()},
        "models": models,
    }
    (directory / ENSEMBLE_FILE).write_text(json.dumps(ensemble, indent=2) + "\n", encoding="utf-8")
    write_manifest(directory, "cxr")
    return directory
