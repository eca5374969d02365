"""CXR: the eight TorchXRayVision models as an ensemble, run from their ONNX (or torch.export) form.

Preprocessing as the training-era TorchXRayVision did it: 8-bit 0..255 -> ``(2 * x / 255 - 1) * 1024``, first channel,
centre crop to the short side (``XRayCenterCrop``), then resize to each model's resolution (224 for the DenseNets, 512
for the ResNet) by the models' own ``fix_resolution``, which the reference reaches by passing them the cropped image.
In the torchxrayvision the VILA-M3 training scores were made with (1.2.4, named in Project-MONAI/VLM-Radiology-Agent-
Framework ``m3/data_prepare/experts/torchxrayvision/README.md``) that is ``nn.Upsample(mode="bilinear",
align_corners=False)``: plain bilinear, no antialiasing, also when it shrinks a 2,000-pixel radiograph to 224
(mlmed/torchxrayvision ``torchxrayvision/models.py`` before 09bafae). Since 09bafae (January 2025) torchxrayvision
interpolates with ``antialias=True``, which changes the scores (a yes/no near 0.5 can flip); we keep the training-era
resize, and ``antialias=True`` only on request. Scores: for each of the 18 pathologies, the mean over the models of
its subset (``pathology_groups`` in ensemble.json, else every model) that predict it (non-empty entry).
No torchvision and no torchxrayvision are needed here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.backends import BackendKind, EngineCache, NetworkArtifacts, Precision, PredictorChoice, ShapeProfile, TensorSpec
from engines.backends import open_predictor
from engines.experts.base import ExpertError, ExpertInput, ExpertName, ExpertResult
from engines.experts.labels import CXR_PATHOLOGIES
from engines.experts.measurements import StageTimer

__all__ = ["CxrExpert", "CxrModelEntry", "read_ensemble", "cxr_artifacts", "preprocess_cxr", "ensemble_scores"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CxrModelEntry:
    name: str
    onnx_path: Path
    torch_path: Path
    resolution: int
    pathologies: tuple[str, ...]


def read_ensemble(directory: Path) -> tuple[dict, list[CxrModelEntry]]:
    path = Path(directory) / "ensemble.json"
    if not path.is_file():
        raise ExpertError(f"{path} is missing; run `m3edge models demo` or `m3edge models import`")
    ensemble = json.loads(path.read_text(encoding="utf-8"))
    entries = [
        CxrModelEntry(
            name=model["name"],
            onnx_path=Path(directory) / model["onnx"],
            torch_path=Path(directory) / model["torch"],
            resolution=int(model["resolution"]),
            pathologies=tuple(model["pathologies"]),
        )
        for model in ensemble["models"]
    ]
    return ensemble, entries


def cxr_artifacts(entry: CxrModelEntry) -> NetworkArtifacts:
    size = entry.resolution
    profile = ShapeProfile({"image": ((1, 1, size, size), (1, 1, size, size), (8, 1, size, size))})

    def torch_module() -> torch.nn.Module:
        if not entry.torch_path.is_file():
            raise FileNotFoundError(f"{entry.torch_path} is missing")
        return torch.export.load(str(entry.torch_path)).module()

    return NetworkArtifacts(
        name=f"cxr.{entry.name}",
        inputs=(TensorSpec("image", (None, 1, size, size)),),
        outputs=(TensorSpec("scores", (None, len(CXR_PATHOLOGIES))),),
        onnx_path=entry.onnx_path,
        torch_module=torch_module,
        profiles=(profile,),
        onnx_by_precision={p: entry.onnx_path.with_suffix(f".{p.value}.onnx") for p in (Precision.FP16, Precision.BF16)},
    )


def preprocess_cxr(image: np.ndarray, resolutions: set[int], *, antialias: bool = False) -> dict[int, torch.Tensor]:
    """uint8 (H, W) or (H, W, C) -> per resolution a (1, 1, R, R) float32 tensor in [-1024, 1024].

    The resize is the training era's plain bilinear (``align_corners=False``, no antialiasing); ``antialias=True`` is
    what torchxrayvision does since January 2025.
    """
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[:, :, 0]
    if image.ndim != 2:
        raise ValueError(f"CXR takes one 8-bit image (H, W); got an array of shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"CXR takes an 8-bit (uint8) image; got {image.dtype} (convert with the VOI LUT first)")
    scaled = (2.0 * (image.astype(np.float32) / 255.0) - 1.0) * 1024.0
    height, width = scaled.shape
    side = min(height, width)
    top, left = height // 2 - side // 2, width // 2 - side // 2
    cropped = torch.from_numpy(np.ascontiguousarray(scaled[top : top + side, left : left + side]))[None, None]
    resized = {}
    for resolution in sorted(resolutions):
        if side == resolution:
            resized[resolution] = cropped
        else:
            resized[resolution] = torch.nn.functional.interpolate(
                cropped, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=antialias
            )
    return resized


def ensemble_scores(
    per_model: dict[str, np.ndarray], entries: list[CxrModelEntry], groups: dict[str, list[str]]
) -> dict[str, float]:
    """Mean per pathology over the models of its group that predict it."""
    by_name = {entry.name: entry for entry in entries}
    scores = {}
    for index, pathology in enumerate(CXR_PATHOLOGIES):
        members = groups.get(pathology) or list(by_name)
        values = [
            float(per_model[name][index])
            for name in members
            if name in per_model and by_name[name].pathologies[index] == pathology
        ]
        if values:
            scores[pathology] = float(np.mean(values))
    return scores


class CxrExpert:
    """Loaded once per worker (eight predictors); ``run`` many times; ``release`` frees them."""

    name = ExpertName.CXR

    def __init__(
        self,
        ensemble_dir: Path,
        backend: BackendKind | str = BackendKind.AUTO,
        engine_cache: EngineCache | None = None,
        precision: Precision | str = Precision.FP16,
    ) -> None:
        self.ensemble, self.entries = read_ensemble(Path(ensemble_dir))
        self.groups = dict(self.ensemble.get("pathology_groups", {}))
        self.choices: dict[str, PredictorChoice] = {
            entry.name: open_predictor(cxr_artifacts(entry), backend, engine_cache=engine_cache, precision=precision)
            for entry in self.entries
        }
        logger.info("CXR ensemble %s loaded on %s", self.model_version, sorted({c.backend for c in self.choices.values()}))

    @property
    def model_version(self) -> str:
        return f"torchxrayvision ensemble {self.ensemble.get('version', '?')}"

    @property
    def backend(self) -> str:
        return ",".join(sorted({choice.backend for choice in self.choices.values()}))

    def run(self, inputs: ExpertInput, argument: str | None = None) -> ExpertResult:
        if not self.choices:
            raise ExpertError("the CXR expert was released; load it again")
        timer = StageTimer()
        with timer("preprocess"):
            images = preprocess_cxr(inputs.volume, {entry.resolution for entry in self.entries})
        with timer("inference"):
            per_model = {
                entry.name: self.choices[entry.name].predictor({"image": images[entry.resolution]})["scores"][0].cpu().numpy()
                for entry in self.entries
            }
        with timer("postprocess"):
            scores = ensemble_scores(per_model, self.entries, self.groups)
        reasons = sorted({choice.fallback_reason for choice in self.choices.values() if choice.fallback_reason})
        return ExpertResult(
            expert=self.name,
            argument=None,
            backend=self.backend,
            model_version=self.model_version,
            demo=bool(self.ensemble.get("demo", False)),
            scores=scores,
            timings=timer.seconds,
            fallback_reason="; ".join(reasons),
        )

    def release(self) -> None:
        for choice in self.choices.values():
            choice.predictor.release()
        self.choices = {}
