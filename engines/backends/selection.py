"""Choosing the backend a network runs on, from the ``PREDICTOR_BACKEND`` setting.

- ``auto``: TensorRT when it is installed, a GPU is present and a healthy engine was built ahead of time; else torch
  on CUDA; else ONNX Runtime on the CPU.
- ``tensorrt``: as asked, or torch (CUDA when present) with the reason logged at WARNING.
- ``torch`` / ``onnxruntime``: as asked, or the other one with the reason logged at WARNING.

The choice (``PredictorChoice.backend``, ``.fallback_reason``) is what every ``ExpertResult`` records.
Nothing here builds an engine: a missing engine is a fallback, never a build on the request path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from engines.backends.artifacts import NetworkArtifacts
from engines.backends.base import BackendKind, BackendUnavailable, Precision, Predictor, PredictorError
from engines.backends.engine_cache import EngineCache

__all__ = ["PredictorChoice", "open_predictor", "cuda_is_available"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictorChoice:
    predictor: Predictor
    requested: BackendKind
    fallback_reason: str = ""

    @property
    def backend(self) -> str:
        return self.predictor.label


def cuda_is_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _torch(network: NetworkArtifacts, device: str, precision: Precision) -> Predictor:
    from engines.backends.torch import TorchPredictor

    if network.torch_module is None:
        raise BackendUnavailable(f"{network.name} has no torch form installed (only ONNX)")
    precision = precision if device.startswith("cuda") else Precision.FP32
    try:
        return TorchPredictor(network.torch_module(), network.inputs, network.outputs, device=device, precision=precision)
    except AssertionError as exc:  # torch built without CUDA asserts instead of raising
        raise BackendUnavailable(f"torch cannot use {device}: {exc}") from exc


def _onnxruntime(network: NetworkArtifacts) -> Predictor:
    from engines.backends.onnxruntime import OnnxRuntimePredictor

    if network.onnx_path is None:
        raise BackendUnavailable(f"{network.name} has no ONNX export")
    return OnnxRuntimePredictor(network.onnx_path)


def _tensorrt(network: NetworkArtifacts, engine_cache: EngineCache | None, precision: Precision, runtime_factory) -> Predictor:
    from engines.backends.tensorrt import TensorRTRuntime, load_tensorrt_predictor

    if engine_cache is None:
        raise BackendUnavailable("no engine cache configured")
    runtime = (runtime_factory or TensorRTRuntime.detect)()
    return load_tensorrt_predictor(network, engine_cache, precision, runtime)


def open_predictor(
    network: NetworkArtifacts,
    requested: BackendKind | str = BackendKind.AUTO,
    *,
    engine_cache: EngineCache | None = None,
    precision: Precision | str = Precision.FP16,
    cuda_available: Callable[[], bool] = cuda_is_available,
    tensorrt_runtime: Callable[[], object] | None = None,
) -> PredictorChoice:
    """Open ``network`` on the requested backend, falling back as the module docstring says."""
    requested = BackendKind(requested)
    precision = Precision(precision)
    has_cuda = cuda_available()
    torch_device = "cuda" if has_cuda else "cpu"

    if requested in (BackendKind.AUTO, BackendKind.TENSORRT):
        try:
            if not has_cuda:
                raise BackendUnavailable("no CUDA GPU is visible")
            return PredictorChoice(_tensorrt(network, engine_cache, precision, tensorrt_runtime), requested)
        except (PredictorError, RuntimeError) as exc:
            reason = f"tensorrt unavailable for {network.name}: {exc}"
        if requested is BackendKind.AUTO and not has_cuda:
            logger.info("%s; auto uses onnxruntime on the CPU", reason)
            return _first_working(network, requested, [("onnxruntime", None), ("torch", "cpu")], precision, "")
        logger.warning("%s; falling back to torch-%s", reason, torch_device)
        return _first_working(network, requested, [("torch", torch_device), ("onnxruntime", None)], precision, reason)

    if requested is BackendKind.TORCH:
        return _first_working(network, requested, [("torch", torch_device), ("onnxruntime", None)], precision, "")
    return _first_working(network, requested, [("onnxruntime", None), ("torch", torch_device)], precision, "")


def _first_working(
    network: NetworkArtifacts,
    requested: BackendKind,
    candidates: list[tuple[str, str | None]],
    precision: Precision,
    reason: str,
) -> PredictorChoice:
    reasons = [reason] if reason else []
    for position, (backend, device) in enumerate(candidates):
        try:
            predictor = _onnxruntime(network) if backend == "onnxruntime" else _torch(network, device or "cpu", precision)
        except (PredictorError, RuntimeError, OSError) as exc:
            reasons.append(f"{backend} unavailable for {network.name}: {exc}")
            if position + 1 < len(candidates):
                logger.warning("%s; falling back to %s", reasons[-1], candidates[position + 1][0])
            continue
        return PredictorChoice(predictor, requested, "; ".join(reasons))
    raise BackendUnavailable("; ".join(reasons))
