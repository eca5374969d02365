"""How close two outputs are: Dice per label for segmentations, agreement of yes/no decisions, numeric differences."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["dice_per_label", "decision_agreement", "numeric_difference"]


def dice_per_label(reference: np.ndarray, candidate: np.ndarray, labels: tuple[int, ...]) -> dict[str, float | None]:
    """Dice of each label; None where the label is in neither (nothing to agree on)."""
    result: dict[str, float | None] = {}
    for label in labels:
        a, b = reference == label, candidate == label
        total = int(a.sum()) + int(b.sum())
        result[str(label)] = None if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
    return result


def decision_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of (sample, class) decisions that are the same."""
    return float(np.mean(reference == candidate))


def numeric_difference(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    reference, candidate = reference.float().cpu(), candidate.float().cpu()
    difference = (reference - candidate).abs()
    scale = float(reference.abs().max()) or 1.0
    return {
        "max_abs": float(difference.max()),
        "mean_abs": float(difference.mean()),
        "max_relative_to_range": float(difference.max()) / scale,
        "finite": bool(torch.isfinite(candidate).all()),
    }
