"""Volumes of labelled structures, in millilitres, from a label grid and its affine."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np

__all__ = ["voxel_volume_ml", "label_volumes_ml", "StageTimer"]


def voxel_volume_ml(affine: np.ndarray) -> float:
    """One voxel's volume: |det| of the affine's 3x3 part (mm^3) / 1000."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    volume = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    if volume == 0.0:
        raise ValueError("affine is singular: its voxels have no volume")
    return volume


def label_volumes_ml(labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str]) -> dict[str, float]:
    """name -> volume (mL) for every non-zero label present in ``labels``."""
    per_voxel = voxel_volume_ml(affine)
    ids, counts = np.unique(labels[labels != 0], return_counts=True)
    return {names.get(int(i), str(int(i))): float(c) * per_voxel for i, c in zip(ids, counts)}


class StageTimer:
    """Seconds spent in each named stage: ``with timer("preprocess"): ...``; ``timer.seconds`` for the result."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
