"""The one interface every inference backend implements: named tensors in, named tensors out.

A ``Predictor`` wraps one network (or one part of a network, e.g. VISTA3D's ``image_encoder.encoder``) on one backend.
It says where it runs (``device``), in what precision, and which input shapes it accepts (``inputs``: one
``TensorSpec`` per input, ``None`` marking a dynamic axis). Inputs may be numpy arrays or torch tensors; outputs
are torch tensors on the predictor's device, so the torch code around a predictor never cares which backend ran.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BackendKind",
    "Precision",
    "TensorSpec",
    "ShapeProfile",
    "Predictor",
    "PredictorError",
    "BackendUnavailable",
    "ShapeNotAccepted",
]


class BackendKind(str, enum.Enum):
    """What ``PREDICTOR_BACKEND`` may name."""

    AUTO = "auto"
    TENSORRT = "tensorrt"
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class PredictorError(RuntimeError):
    """A predictor could not run; the message says what to do."""


class BackendUnavailable(PredictorError):
    """The backend cannot be used on this machine (package missing, no GPU, no engine built)."""


class ShapeNotAccepted(PredictorError):
    """An input's shape is outside what the predictor (or its TensorRT profiles) accepts."""


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: ``shape`` has an int for a fixed axis and ``None`` for a dynamic one."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("TensorSpec.name must be a non-empty string")
        for axis in self.shape:
            if axis is not None and (not isinstance(axis, int) or axis < 1):
                raise ValueError(f"TensorSpec {self.name!r}: axis sizes must be positive ints or None, got {self.shape}")

    def accepts(self, shape: Sequence[int]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(fixed is None or fixed == actual for fixed, actual in zip(self.shape, shape))


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimisation profile: per input name, the (min, opt, max) shapes."""

    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def __post_init__(self) -> None:
        for name, (low, opt, high) in self.shapes.items():
            if not (len(low) == len(opt) == len(high)):
                raise ValueError(f"ShapeProfile {name!r}: min/opt/max must have the same rank")
            if any(not (a <= b <= c) for a, b, c in zip(low, opt, high)):
                raise ValueError(f"ShapeProfile {name!r}: need min <= opt <= max on every axis, got {low}, {opt}, {high}")

    def accepts(self, shapes: Mapping[str, Sequence[int]]) -> bool:
        for name, (low, _opt, high) in self.shapes.items():
            shape = shapes.get(name)
            if shape is None or len(shape) != len(low):
                return False
            if any(not (a <= s <= c) for a, s, c in zip(low, shape, high)):
                return False
        return True

    def describe(self) -> str:
        """A stable text form, part of the engine cache key."""
        parts = []
        for name in sorted(self.shapes):
            low, opt, high = self.shapes[name]
            parts.append(f"{name}:{'x'.join(map(str, low))}/{'x'.join(map(str, opt))}/{'x'.join(map(str, high))}")
        return ";".join(parts)


class Predictor(abc.ABC):
    """Runs one network on one backend. Subclasses set ``backend``, ``device``, ``precision``, ``inputs``, ``outputs``."""

    backend: str  # "torch", "onnxruntime" or "tensorrt"
    device: str  # "cpu", "cuda", "cuda:1", ...
    precision: Precision
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def label(self) -> str:
        """What results record: ``torch-cpu``, ``torch-cuda``, ``onnxruntime-cpu``, ``tensorrt``."""
        if self.backend == "tensorrt":
            return "tensorrt"
        return f"{self.backend}-{self.device.split(':')[0]}"

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    def check_inputs(self, feeds: Mapping[str, Any]) -> None:
        """Raise ``ShapeNotAccepted`` naming the first input that is missing or has a shape outside ``inputs``."""
        for spec in self.inputs:
            if spec.name not in feeds:
                raise ShapeNotAccepted(f"{self.label}: input {spec.name!r} is missing (given: {sorted(feeds)})")
            shape = tuple(feeds[spec.name].shape)
            if not spec.accepts(shape):
                raise ShapeNotAccepted(f"{self.label}: input {spec.name!r} has shape {shape}; accepted: {spec.shape}")

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        self.check_inputs(feeds)
        return self.run(feeds)

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Named inputs (numpy or torch) -> named torch tensors on ``device``."""

    def release(self) -> None:
        """Free what this predictor holds (sessions, engines, GPU memory). Safe to call twice."""
