"""ONNX Runtime backend: the CPU path (CUDA execution provider used when asked for and present)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engines.backends.base import BackendUnavailable, Precision, Predictor, TensorSpec
from engines.backends.threads import cpu_thread_limit

__all__ = ["OnnxRuntimePredictor"]

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32"}


def _spec(node: Any) -> TensorSpec:
    shape = tuple(axis if isinstance(axis, int) and axis > 0 else None for axis in node.shape)
    return TensorSpec(node.name, shape, _ORT_DTYPES.get(node.type, node.type))


class OnnxRuntimePredictor(Predictor):
    """One ``onnxruntime.InferenceSession`` over an ONNX file; inputs/outputs and dynamic axes come from the graph."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: Path | str, device: str = "cpu", intra_op_threads: int = 0) -> None:
        import onnxruntime

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise BackendUnavailable(f"ONNX file {onnx_path} is missing; run `m3edge models demo` or `m3edge models import`")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise BackendUnavailable("onnxruntime has no CUDAExecutionProvider here; install onnxruntime-gpu or use cpu")
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        intra_op_threads = intra_op_threads or cpu_thread_limit()  # 0 and no process limit: one thread per core
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        self.device = device
        self.precision = Precision.FP32
        self.onnx_path = onnx_path
        self._session: Any = onnxruntime.InferenceSession(str(onnx_path), options, providers=providers)
        self.inputs = tuple(_spec(node) for node in self._session.get_inputs())
        self.outputs = tuple(_spec(node) for node in self._session.get_outputs())
        if any(spec.dtype == "float16" for spec in self.inputs):
            self.precision = Precision.FP16

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        if self._session is None:
            raise RuntimeError("this OnnxRuntimePredictor was released; load the model again")
        arrays = {}
        for spec in self.inputs:
            value = feeds[spec.name]
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            arrays[spec.name] = np.ascontiguousarray(value, dtype=np.dtype(spec.dtype))
        results = self._session.run(list(self.output_names), arrays)
        device = "cuda" if self.device.startswith("cuda") else "cpu"
        return {name: torch.from_numpy(np.asarray(value)).float().to(device) for name, value in zip(self.output_names, results)}

    def release(self) -> None:
        self._session = None
