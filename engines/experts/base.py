"""What every expert takes and gives back; the agent and the service speak only this."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["ExpertName", "ExpertInput", "ExpertResult", "Expert", "ExpertError"]


class ExpertName(str, enum.Enum):
    """The names the model uses in its trigger (``<VISTA3D(...)>``, ``<BRATS()>``, ``<CXR()>``)."""

    VISTA3D = "VISTA3D"
    BRATS = "BRATS"
    CXR = "CXR"


class ExpertError(RuntimeError):
    """An expert could not produce a result; the message says why in words an operator can act on."""


@dataclass(frozen=True)
class ExpertInput:
    """Plain arrays from ``dicom_node.volumes``: never DICOM datasets.

    - VISTA3D: ``volume`` (X, Y, Z) float32 HU with a 4x4 ``affine`` (voxel index -> RAS mm).
    - BraTS: ``volume`` (4, X, Y, Z) float32 in the order T1c, T1, T2, FLAIR, one 1 mm grid, one ``affine``
      (``on_common_grid`` makes it from the four series' volumes).
    - CXR: ``volume`` (H, W) uint8, MONOCHROME2, ``affine`` None.
    """

    volume: np.ndarray
    affine: np.ndarray | None = None

    @classmethod
    def on_common_grid(cls, sequences, spacing_mm: float = 1.0) -> ExpertInput:
        """Several co-registered volumes (``(array, affine)`` each, BraTS: T1c, T1, T2, FLAIR) as one input on the
        grid the expert takes: ``spacing_mm`` RAS voxels covering the first volume (protocol section 7), trilinear
        (``engines.resample.resample_to_common_grid``). The expert's labels come back on that grid."""
        from engines.resample import resample_to_common_grid

        common = resample_to_common_grid(list(sequences), reference=0, spacing_mm=spacing_mm)
        return cls(common.array, common.affine)


@dataclass
class ExpertResult:
    expert: ExpertName
    argument: str | None  # VISTA3D's label group ("everything", "hepatic tumor", ...); None for the others
    backend: str  # "tensorrt", "torch-cuda", "torch-cpu", "onnxruntime-cpu", ...
    model_version: str  # bundle version or weights digest, so reports can name exactly what ran
    demo: bool  # True when random-weight demo models produced this
    label_volume: np.ndarray | None = None  # segmentation on the input grid (VISTA3D ids, or BraTS 1/2/4)
    affine: np.ndarray | None = None  # that grid's affine (the input's)
    label_names: dict[int, str] = field(default_factory=dict)  # label id -> name, for the ids present
    volumes_ml: dict[str, float] = field(default_factory=dict)  # per structure (VISTA3D names; TC/WT/ET for BraTS)
    scores: dict[str, float] = field(default_factory=dict)  # CXR: pathology -> ensemble score 0..1
    timings: dict[str, float] = field(default_factory=dict)  # seconds: preprocess, inference, postprocess
    fallback_reason: str = ""  # non-empty when the configured backend could not be used


@runtime_checkable
class Expert(Protocol):
    name: ExpertName

    def run(self, inputs: ExpertInput, argument: str | None = None) -> ExpertResult:
        """Run the model; raise ``ExpertError`` (or ``ValueError`` for a bad argument) on failure."""
        ...
