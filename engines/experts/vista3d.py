"""VISTA3D (CT): the bundle's inference pipeline, with the image encoder on a ``Predictor``.

Preprocessing, in the bundle's order (inference.json v0.5.4): spacing 1.5 mm (bilinear), crop foreground
(voxels > 0 HU, margin 10), intensity -963.82..1053.68 -> 0..1 clipped, orientation RAS, float32. Inference: a
sliding window of 128^3 (overlap 0.3, gaussian blending, as the bundle's Vista3dInferer) with the label prompts as
``class_vector``. Postprocessing as the bundle's ``VistaPostTransformd`` (negative logits are background, argmax
among prompts, mapped to the prompts' ids), then ``Invertd`` with nearest interpolation back to the input grid.

``image_encoder.encoder`` (the heavy SegResNet encoder) runs on the chosen backend, as MONAI's ``trt_compile``
does in the bundle's inference_trt.json; the decoder branches and the class head stay in torch.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch

from engines.backends import (
    BackendKind,
    EngineCache,
    NetworkArtifacts,
    Precision,
    PredictorChoice,
    ShapeProfile,
    TensorSpec,
    open_predictor,
)
from engines.experts.base import ExpertError, ExpertInput, ExpertName, ExpertResult
from engines.experts.bundle import MonaiBundle
from engines.experts.labels import vista3d_label_names, vista3d_label_prompt
from engines.experts.measurements import StageTimer, label_volumes_ml

__all__ = ["Vista3DExpert", "vista3d_encoder_artifacts", "ENCODER_PART", "ENCODER_LEVELS"]

logger = logging.getLogger(__name__)

ENCODER_PART = "image_encoder.encoder"
ENCODER_LEVELS = 5  # vista3d132's SegResNetDS2 has blocks_down (1, 2, 2, 4, 4): five feature maps
INTENSITY_RANGE = (-963.8247715525971, 1053.678477684517)
MAX_WINDOW_BATCH = 4  # the bundle's max_dynamic_batchsize for its TensorRT profiles


class _EncoderOnPredictor(torch.nn.Module):
    """Stands where ``image_encoder.encoder`` stood: image in, the list of feature maps out."""

    def __init__(self, choice: PredictorChoice, device: str) -> None:
        super().__init__()
        self.choice = choice
        self.device = device

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        outputs = self.choice.predictor({"image": image})
        return [outputs[f"features_{level}"].to(self.device) for level in range(ENCODER_LEVELS)]


def vista3d_encoder_artifacts(bundle: MonaiBundle, network: torch.nn.Module | None = None) -> NetworkArtifacts:
    """The encoder as each backend sees it (ONNX next to the weights; profiles for the bundle's patch size)."""
    patch = tuple(int(v) for v in bundle.value("patch_size"))
    profile = ShapeProfile({"image": ((1, 1, *patch), (1, 1, *patch), (MAX_WINDOW_BATCH, 1, *patch))})

    def torch_module() -> torch.nn.Module:
        source = network if network is not None else bundle.load_network()
        return source.image_encoder.encoder

    return NetworkArtifacts(
        name="vista3d.encoder",
        inputs=(TensorSpec("image", (None, 1, None, None, None)),),
        outputs=tuple(TensorSpec(f"features_{level}", (None, None, None, None, None)) for level in range(ENCODER_LEVELS)),
        onnx_path=bundle.onnx_path(ENCODER_PART),
        torch_module=torch_module,
        profiles=(profile,),
        onnx_by_precision={p: bundle.onnx_path(f"{ENCODER_PART}.{p.value}") for p in (Precision.FP16, Precision.BF16)},
    )


class Vista3DExpert:
    """Loaded once per worker; ``run`` many times; ``release`` frees the network and the predictor."""

    name = ExpertName.VISTA3D

    def __init__(
        self,
        bundle_dir: Path,
        backend: BackendKind | str = BackendKind.AUTO,
        engine_cache: EngineCache | None = None,
        precision: Precision | str = Precision.FP16,
    ) -> None:
        self.bundle = MonaiBundle(Path(bundle_dir))
        network = self.bundle.load_network()
        artifacts = vista3d_encoder_artifacts(self.bundle, network)
        self.choice = open_predictor(artifacts, backend, engine_cache=engine_cache, precision=precision)
        self.device = "cuda" if self.choice.predictor.device.startswith("cuda") else "cpu"
        network.image_encoder.encoder = _EncoderOnPredictor(self.choice, self.device)
        self.network: torch.nn.Module | None = network.to(self.device).eval()
        self.patch_size = tuple(int(v) for v in self.bundle.value("patch_size"))
        self.overlap = float(self.bundle.value("inferer", "overlap", default=0.3))
        self.spacing = tuple(float(v) for v in self.bundle.value("resample_spacing"))
        self._preprocessing = _preprocessing(self.spacing)
        self.amp = self.device == "cuda" and Precision(precision) is not Precision.FP32
        logger.info("VISTA3D %s loaded: encoder on %s", self.bundle.version, self.choice.backend)

    @property
    def model_version(self) -> str:
        return f"vista3d {self.bundle.version}"

    def run(self, inputs: ExpertInput, argument: str | None = None) -> ExpertResult:
        prompt = vista3d_label_prompt(argument)  # ValueError naming the valid arguments
        volume, affine = _check_input(inputs)
        if self.network is None:
            raise ExpertError("the VISTA3D expert was released; load it again")
        timer = StageTimer()
        with timer("preprocess"):
            data = self._preprocessing({"image": _as_meta_tensor(volume, affine)})
        with timer("inference"):
            logits = self._infer(data["image"], prompt)
        with timer("postprocess"):
            labels = self._postprocess(logits, prompt, data)
            names = vista3d_label_names()
            present = {int(i): names[int(i)] for i in np.unique(labels) if i != 0}
            volumes = label_volumes_ml(labels, affine, names)
        return ExpertResult(
            expert=self.name,
            argument=(argument or "").strip() or "everything",
            backend=self.choice.backend,
            model_version=self.model_version,
            demo=self.bundle.is_demo,
            label_volume=labels,
            affine=np.array(affine, dtype=np.float64),
            label_names=present,
            volumes_ml=volumes,
            timings=timer.seconds,
            fallback_reason=self.choice.fallback_reason,
        )

    def _infer(self, image: torch.Tensor, prompt: tuple[int, ...]) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        class_vector = torch.tensor(prompt, dtype=torch.long, device=self.device).unsqueeze(1)
        batch = image.as_tensor().unsqueeze(0).to(self.device)

        def windows(accumulate_on: str) -> torch.Tensor:
            # As the bundle's Vista3dInferer: gaussian blending, logits transposed to (1, prompts, ...).
            return sliding_window_inference(
                batch,
                roi_size=self.patch_size,
                sw_batch_size=1,
                predictor=self.network,
                overlap=self.overlap,
                mode="gaussian",
                sw_device=self.device,
                device=accumulate_on,
                class_vector=class_vector,
                transpose=True,
            )

        # The bundle evaluates with amp on CUDA: the torch part (decoders, class head) under fp16 autocast too.
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            try:
                logits = windows(self.device)
            except torch.cuda.OutOfMemoryError:
                # The bundle's inferer does the same: keep the windows on the GPU, stitch them in host memory.
                torch.cuda.empty_cache()
                logger.warning("VISTA3D: GPU memory exhausted stitching %s prompts; stitching on the CPU", len(prompt))
                logits = windows("cpu")
        return logits[0].float().cpu()  # (prompts, X, Y, Z)

    def _postprocess(self, logits: torch.Tensor, prompt: tuple[int, ...], data: dict) -> np.ndarray:
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        labels = _prompt_labels(logits, prompt)
        data = dict(data)
        data["pred"] = MetaTensor(labels[None], meta=dict(data["image"].meta))
        inverted = Invertd(keys="pred", transform=self._preprocessing, orig_keys="image", nearest_interp=True, to_tensor=True)(
            data
        )
        return np.rint(inverted["pred"][0].cpu().numpy()).astype(np.int16)

    def release(self) -> None:
        self.choice.predictor.release()
        self.network = None
        if self.device == "cuda":
            torch.cuda.empty_cache()


def _prompt_labels(logits: torch.Tensor, prompt: tuple[int, ...]) -> torch.Tensor:
    """The bundle's VistaPostTransformd for label prompts: logits (N, ...) -> VISTA3D ids (...)."""
    ids = torch.tensor(prompt, dtype=torch.float32)
    if logits.shape[0] == 1:
        return torch.where(logits[0] > 0, ids[0], torch.zeros((), dtype=torch.float32))
    background = torch.all(logits <= 0, dim=0)
    labels = ids[logits.argmax(dim=0)]
    labels[background] = 0.0
    return labels


def _preprocessing(spacing: tuple[float, ...]):
    from monai.transforms import CastToTyped, Compose, CropForegroundd, Orientationd, ScaleIntensityRanged, Spacingd

    return Compose(
        [
            Spacingd(keys="image", pixdim=spacing, mode="bilinear"),
            CropForegroundd(keys="image", source_key="image", margin=10, allow_smaller=True),
            ScaleIntensityRanged(
                keys="image", a_min=INTENSITY_RANGE[0], a_max=INTENSITY_RANGE[1], b_min=0.0, b_max=1.0, clip=True
            ),
            Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            CastToTyped(keys="image", dtype=torch.float32),
        ]
    )


def _as_meta_tensor(volume: np.ndarray, affine: np.ndarray):
    from monai.data import MetaTensor

    return MetaTensor(torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None], affine=torch.as_tensor(affine))


def _check_input(inputs: ExpertInput) -> tuple[np.ndarray, np.ndarray]:
    volume = np.asarray(inputs.volume)
    if volume.ndim != 3:
        raise ValueError(f"VISTA3D takes one CT volume (X, Y, Z) in HU; got an array of shape {volume.shape}")
    if inputs.affine is None or np.asarray(inputs.affine).shape != (4, 4):
        raise ValueError("VISTA3D needs the volume's 4x4 affine (voxel index -> RAS mm)")
    return volume, np.asarray(inputs.affine, dtype=np.float64)
