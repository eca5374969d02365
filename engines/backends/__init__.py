"""Inference backends behind one ``Predictor`` interface: torch, onnxruntime and tensorrt (import-guarded).

``engines.backends.tensorrt`` imports ``tensorrt`` only when an engine is built or loaded; nothing here needs it.
"""

from engines.backends.artifacts import NetworkArtifacts
from engines.backends.base import (
    BackendKind,
    BackendUnavailable,
    Precision,
    Predictor,
    PredictorError,
    ShapeNotAccepted,
    ShapeProfile,
    TensorSpec,
)
from engines.backends.engine_cache import EngineCache, EngineKey, file_sha256
from engines.backends.selection import PredictorChoice, open_predictor

__all__ = [
    "BackendKind",
    "BackendUnavailable",
    "EngineCache",
    "EngineKey",
    "NetworkArtifacts",
    "Precision",
    "Predictor",
    "PredictorChoice",
    "PredictorError",
    "ShapeNotAccepted",
    "ShapeProfile",
    "TensorSpec",
    "file_sha256",
    "open_predictor",
]
