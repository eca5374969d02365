"""What a backend needs to know about one network: its torch form, its ONNX export and its TensorRT profiles."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.backends.base import Precision, ShapeProfile, TensorSpec

__all__ = ["NetworkArtifacts"]


@dataclass(frozen=True)
class NetworkArtifacts:
    """One network (or network part) as each backend consumes it.

    - ``torch_module``: builds the eager module (loaded once, lazily); None when only ONNX exists.
    - ``onnx_path``: the fp32 ONNX export (ONNX Runtime, and TensorRT 10 which lowers precision by builder flags).
    - ``onnx_by_precision``: ONNX exports already in another precision (TensorRT 11 takes precision from the graph).
    - ``profiles``: TensorRT optimisation profiles, chosen per call by the input shapes.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    onnx_path: Path | None
    torch_module: Callable[[], Any] | None = None
    profiles: tuple[ShapeProfile, ...] = ()
    onnx_by_precision: Mapping[Precision, Path] = field(default_factory=dict)

    def onnx_for(self, precision: Precision) -> Path | None:
        if precision is Precision.FP32:
            return self.onnx_path
        return self.onnx_by_precision.get(precision)
