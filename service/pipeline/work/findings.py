"""The expert's result as the report writers take it: ``ExpertFindings`` with algorithm identity, SEG segments on a
source series' grid, CXR scores, and the other series analysed as evidence.

- VISTA3D: one segment per structure found (one label id each), volumes from the expert.
- BraTS: the overlapping regions TC = (1, 4), WT = (1, 2, 4), ET = (4,); the labels, made on the 1 mm grid, are put
  back on the T1c's own grid (nearest neighbour) for the SEG; volumes are the expert's (1 mm grid); the T1, T2 and
  FLAIR series are further evidence.
- CXR: the 18 pathology scores (Present at >= 0.5).

An expert that found nothing (VISTA3D: no label; BraTS: no tumour label on the T1c's grid; no score) gives findings
with neither segmentation nor scores: the report says so, without a SEG.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom import Dataset

from dicom_node.results import (
    AlgorithmIdentity,
    ExpertFindings,
    LabelSegmentation,
    PathologyScore,
    StructureSegment,
)
from service.pipeline.work.expert_record import EXPERT_IDENTITY
from service.pipeline.work.resources import load_arrays

__all__ = ["expert_algorithm", "expert_findings", "labels_on_grid", "BRATS_REGIONS"]

BRATS_REGIONS = (("tumor core", "TC", (1, 4)), ("whole tumor", "WT", (1, 2, 4)), ("enhancing tumor", "ET", (4,)))


def expert_algorithm(record: dict) -> AlgorithmIdentity:
    name, manufacturer = EXPERT_IDENTITY[record["expert"]]
    return AlgorithmIdentity(
        name=name,
        version=str(record["model_version"])[:64] or "unknown",
        manufacturer=manufacturer,
        backend=str(record["backend"])[:64] or "unknown",
        weights_digest=record["weights_digest"],
        demo=bool(record["demo"]),
    )


def labels_on_grid(labels: np.ndarray, affine: np.ndarray, shape: Sequence[int],
                   target_affine: np.ndarray) -> np.ndarray:
    """``labels`` (on ``affine``) sampled at the voxel centres of another grid, nearest neighbour; 0 outside."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    to_source = np.linalg.inv(np.asarray(affine, dtype=float)) @ np.asarray(target_affine, dtype=float)
    source = np.rint(index @ to_source[:3, :3].T + to_source[:3, 3]).astype(np.int64)
    inside = np.all((source >= 0) & (source < np.asarray(labels.shape)), axis=1)
    out = np.zeros(len(index), dtype=labels.dtype)
    out[inside] = labels[tuple(source[inside].T)]
    return out.reshape(tuple(int(n) for n in shape))


def _vista3d_segmentation(record: dict, labels: np.ndarray, affine: np.ndarray) -> LabelSegmentation | None:
    present = [int(i) for i in np.unique(labels) if i != 0]
    names = record.get("label_names", {})
    volumes = record.get("volumes_ml", {})
    segments = []
    for label in present:
        name = str(names.get(str(label), f"label {label}")).replace("\\", "/")[:64]
        segments.append(StructureSegment(name, (label,), volumes.get(name)))
    if not segments:
        return None
    return LabelSegmentation(labels, affine, tuple(segments))


def _brats_segmentation(record: dict, labels: np.ndarray, affine: np.ndarray,
                        prepared: dict) -> LabelSegmentation | None:
    """TC, WT and ET on the T1c's grid; None when no tumour label lands there (a SEG of empty segments says nothing)."""
    grid = load_arrays(prepared["input"], "source_shape", "source_affine")
    shape, target = grid["source_shape"], grid["source_affine"]
    on_source = labels_on_grid(labels, affine, shape, target)
    tumour_ids = sorted({i for _, _, ids in BRATS_REGIONS for i in ids})
    if not np.isin(on_source, tumour_ids).any():
        return None
    volumes = record.get("volumes_ml", {})
    segments = tuple(StructureSegment(name, ids, volumes.get(key)) for name, key, ids in BRATS_REGIONS)
    return LabelSegmentation(on_source, target, segments)


def expert_findings(record: dict, prepared: dict, sources: Sequence[Dataset],
                    others: Sequence[Dataset]) -> ExpertFindings:
    algorithm = expert_algorithm(record)
    segmentation = None
    if record.get("labels"):
        arrays = load_arrays(record["labels"])
        labels, affine = arrays["labels"], arrays["affine"]
        if record["expert"] == "BRATS":
            segmentation = _brats_segmentation(record, labels, affine, prepared)
        else:
            segmentation = _vista3d_segmentation(record, labels, affine)
    scores = tuple(PathologyScore(name[:64], min(1.0, max(0.0, float(score))))
                   for name, score in record.get("scores", {}).items())
    return ExpertFindings(algorithm, tuple(sources), segmentation=segmentation, scores=scores,
                          other_evidence=tuple(others))
