"""BraTS (brain MRI): the brats_mri_segmentation bundle's SegResNet on a ``Predictor``.

Input: four co-registered sequences on one 1 mm grid, channel order T1c, T1, T2, FLAIR (the bundle's metadata
"image_classes"; the reference demo stacks T1 before T1c, which swaps the first two channels; we follow the
bundle). Preprocessing: channel-wise normalisation over non-zero voxels. Inference: sliding window
roi [240, 240, 160], overlap 0.5. Postprocessing: sigmoid > 0.5 per channel (TC, WT, ET), then the bundle's
labels: ET -> 4, else TC -> 1, else WT -> 2 (edema). Volumes of TC (1 or 4), WT (1, 2 or 4) and ET (4) in mL.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from engines.backends import BackendKind, EngineCache, NetworkArtifacts, Precision, ShapeProfile, TensorSpec, open_predictor
from engines.experts.base import ExpertError, ExpertInput, ExpertName, ExpertResult
from engines.experts.bundle import MonaiBundle
from engines.experts.labels import BRATS_LABELS
from engines.experts.measurements import StageTimer, voxel_volume_ml

__all__ = ["BratsExpert", "brats_artifacts", "brats_labels_from_probabilities"]

logger = logging.getLogger(__name__)


def brats_artifacts(bundle: MonaiBundle, network: torch.nn.Module | None = None) -> NetworkArtifacts:
    roi = tuple(int(v) for v in bundle.value("inferer", "roi_size"))
    profile = ShapeProfile({"image": ((1, 4, *roi), (1, 4, *roi), (2, 4, *roi))})
    return NetworkArtifacts(
        name="brats",
        inputs=(TensorSpec("image", (None, 4, None, None, None)),),
        outputs=(TensorSpec("logits", (None, 3, None, None, None)),),
        onnx_path=bundle.onnx_path("model"),
        torch_module=(lambda: network) if network is not None else bundle.load_network,
        profiles=(profile,),
        onnx_by_precision={p: bundle.onnx_path(f"model.{p.value}") for p in (Precision.FP16, Precision.BF16)},
    )


def brats_labels_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """(3, X, Y, Z) sigmoid outputs (TC, WT, ET) -> labels 4 (ET), 1 (TC), 2 (edema), 0, as the bundle's Lambdad."""
    tumour_core, whole_tumour, enhancing = (probabilities > 0.5)
    return np.where(enhancing, 4, np.where(tumour_core, 1, np.where(whole_tumour, 2, 0))).astype(np.uint8)


class BratsExpert:
    """Loaded once per worker; ``run`` many times; ``release`` frees the predictor."""

    name = ExpertName.BRATS

    def __init__(
        self,
        bundle_dir: Path,
        backend: BackendKind | str = BackendKind.AUTO,
        engine_cache: EngineCache | None = None,
        precision: Precision | str = Precision.FP16,
    ) -> None:
        self.bundle = MonaiBundle(Path(bundle_dir))
        self.choice = open_predictor(brats_artifacts(self.bundle), backend, engine_cache=engine_cache, precision=precision)
        self.roi_size = tuple(int(v) for v in self.bundle.value("inferer", "roi_size"))
        self.overlap = float(self.bundle.value("inferer", "overlap", default=0.5))
        self._released = False
        logger.info("BraTS %s loaded on %s", self.bundle.version, self.choice.backend)

    @property
    def model_version(self) -> str:
        return f"brats_mri_segmentation {self.bundle.version}"

    def run(self, inputs: ExpertInput, argument: str | None = None) -> ExpertResult:
        volume, affine = _check_input(inputs)
        if self._released:
            raise ExpertError("the BraTS expert was released; load it again")
        timer = StageTimer()
        with timer("preprocess"):
            image = _normalise_nonzero_channelwise(volume)
        with timer("inference"):
            logits = self._infer(image)
        with timer("postprocess"):
            labels = brats_labels_from_probabilities(torch.sigmoid(logits).numpy())
            per_voxel = voxel_volume_ml(affine)
            volumes = {
                "TC": float(np.isin(labels, (1, 4)).sum()) * per_voxel,
                "WT": float((labels > 0).sum()) * per_voxel,
                "ET": float((labels == 4).sum()) * per_voxel,
            }
        return ExpertResult(
            expert=self.name,
            argument=None,
            backend=self.choice.backend,
            model_version=self.model_version,
            demo=self.bundle.is_demo,
            label_volume=labels,
            affine=np.array(affine, dtype=np.float64),
            label_names={int(i): BRATS_LABELS[int(i)] for i in np.unique(labels) if i != 0},
            volumes_ml=volumes,
            timings=timer.seconds,
            fallback_reason=self.choice.fallback_reason,
        )

    def _infer(self, image: torch.Tensor) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        predictor = self.choice.predictor
        device = "cuda" if predictor.device.startswith("cuda") else "cpu"

        def network(window: torch.Tensor) -> torch.Tensor:
            return predictor({"image": window})["logits"]

        with torch.inference_mode():
            logits = sliding_window_inference(
                image.unsqueeze(0).to(device), roi_size=self.roi_size, sw_batch_size=1, predictor=network, overlap=self.overlap
            )
        return logits[0].float().cpu()

    def release(self) -> None:
        self.choice.predictor.release()
        self._released = True


def _normalise_nonzero_channelwise(volume: np.ndarray) -> torch.Tensor:
    from monai.transforms import NormalizeIntensity

    image = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    normalised = NormalizeIntensity(nonzero=True, channel_wise=True)(image)
    return (normalised.as_tensor() if hasattr(normalised, "as_tensor") else normalised).float()


def _check_input(inputs: ExpertInput) -> tuple[np.ndarray, np.ndarray]:
    volume = np.asarray(inputs.volume)
    if volume.ndim != 4 or volume.shape[0] != 4:
        raise ValueError(f"BraTS takes (4, X, Y, Z) in the order T1c, T1, T2, FLAIR; got an array of shape {volume.shape}")
    if inputs.affine is None or np.asarray(inputs.affine).shape != (4, 4):
        raise ValueError("BraTS needs the common 1 mm grid's 4x4 affine")
    return volume, np.asarray(inputs.affine, dtype=np.float64)
