"""PyTorch eager backend: CPU or CUDA, optional autocast to fp16/bf16."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from engines.backends.base import Precision, Predictor, TensorSpec

__all__ = ["TorchPredictor"]

_AUTOCAST_DTYPES = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}


class TorchPredictor(Predictor):
    """Calls ``module(*inputs in order)``; a module returning a tensor, a tuple or a list gives outputs in order.

    ``precision`` other than fp32 runs under ``torch.autocast`` (outputs come back as float32).
    """

    backend = "torch"

    def __init__(
        self,
        module: torch.nn.Module,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device: str | torch.device = "cpu",
        precision: Precision | str = Precision.FP32,
    ) -> None:
        self.precision = Precision(precision)
        self.device = str(torch.device(device))
        if self.device == "cpu" and self.precision is Precision.FP16:
            raise ValueError("precision fp16 needs CUDA; use fp32 (or bf16) on the CPU")
        if not inputs or not outputs:
            raise ValueError("TorchPredictor needs at least one input and one output TensorSpec")
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        module = module.to(self.device)
        try:
            module = module.eval()
        except NotImplementedError:  # torch.export programs are always in inference form
            pass
        self._module: torch.nn.Module | None = module

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision is Precision.FP32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=_AUTOCAST_DTYPES[self.precision])

    def run(self, feeds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if self._module is None:
            raise RuntimeError("this TorchPredictor was released; load the model again")
        args = [torch.as_tensor(feeds[spec.name]).to(self.device) for spec in self.inputs]
        with torch.inference_mode(), self._autocast():
            result = self._module(*args)
        values = [result] if isinstance(result, torch.Tensor) else list(result)
        if len(values) != len(self.outputs):
            raise RuntimeError(f"module returned {len(values)} outputs, the predictor declares {len(self.outputs)}")
        return {spec.name: value.float() for spec, value in zip(self.outputs, values)}

    def release(self) -> None:
        self._module = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
