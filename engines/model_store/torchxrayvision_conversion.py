"""Converting the eight TorchXRayVision models to the CXR folder (ONNX + torch.export + ensemble.json).

Runs only where ``torchxrayvision`` (and so torchvision) is installed, e.g. a preparation machine; the folder it
writes is then moved to the air-gapped site and installed with ``m3edge models import``. It is not exercised by
the test suite here (torchxrayvision must not be installed beside the CPU torch of this project); the writing
half (``write_cxr_ensemble``) is, through the demo writer.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from engines.experts.labels import CXR_MODEL_RESOLUTION, CXR_MODELS, CXR_PATHOLOGIES, CXR_PATHOLOGY_GROUPS
from engines.model_store.cxr_ensemble import write_cxr_ensemble

__all__ = ["convert_torchxrayvision", "TorchXRayVisionMissing"]


class TorchXRayVisionMissing(RuntimeError):
    """torchxrayvision is not installed here; the message says where to run the conversion."""


def convert_torchxrayvision(directory: Path, weights_dir: Path | None = None) -> Path:
    """Load the eight models (weights from ``weights_dir`` or torchxrayvision's cache) and write the CXR folder."""
    try:
        xrv = importlib.import_module("torchxrayvision")
    except ImportError as exc:
        raise TorchXRayVisionMissing(
            "converting TorchXRayVision weights needs the torchxrayvision package (`pip install 'm3edge[cxr-import]'`); "
            "run it on a preparation machine, then `m3edge models import` the folder it writes"
        ) from exc
    options = {"cache_dir": str(weights_dir)} if weights_dir is not None else {}
    networks, pathologies = {}, {}
    for name in CXR_MODELS:
        family = xrv.models.ResNet if name.startswith("resnet") else xrv.models.DenseNet
        model = family(weights=name, **options).eval()
        labels = [label if label in CXR_PATHOLOGIES else "" for label in model.pathologies]
        if len(labels) != len(CXR_PATHOLOGIES):
            raise ValueError(f"{name}: expected 18 outputs aligned to default_pathologies, got {len(labels)}")
        networks[name] = model
        pathologies[name] = labels
    return write_cxr_ensemble(
        Path(directory),
        networks,
        resolutions=CXR_MODEL_RESOLUTION,
        pathologies=pathologies,
        groups=CXR_PATHOLOGY_GROUPS,
        version=f"torchxrayvision-{getattr(xrv, '__version__', 'unknown')}",
        demo=False,
    )
