"""The expert's result as the report writers take it: ``ExpertFindings`` with algorithm identity, SEG segments on a
source series' grid, CXR scores, and the other series analysed as evidence.

- VISTA3D: one segment per structure found (one label id each), volumes from the expert.
- BraTS: the overlapping regions TC = (1, 4), WT = (1, 2, 4), ET = (4,); volumes are the expert's (1 mm grid); the T1,
  T2 and FLAIR series are further evidence.
- CXR: the 18 pathology scores (Present at >= 0.5).

The labels come on the grid the expert was given; ``dicom_node.volumes.labels_on_source_grid`` puts them on the
source series' grid (BraTS: from its 1 mm grid onto the T1c's, nearest neighbour; VISTA3D's are already on the CT's).
This module only passes them along.

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
from dicom_node.volumes import labels_on_source_grid
from service.pipeline.contracts import ExpertStageResult

__all__ = ["expert_algorithm", "expert_findings", "BRATS_REGIONS", "EXPERT_IDENTITY"]

BRATS_REGIONS = (("tumor core", "TC", (1, 4)), ("whole tumor", "WT", (1, 2, 4)), ("enhancing tumor", "ET", (4,)))

# How the report names each expert (IHE AI Results: manufacturer and model name of each algorithm).
EXPERT_IDENTITY = {
    "VISTA3D": ("VISTA3D", "NVIDIA"),
    "BRATS": ("BraTS SegResNet", "MONAI"),
    "CXR": ("TorchXRayVision ensemble", "mlmed"),
}


def expert_algorithm(record: ExpertStageResult) -> AlgorithmIdentity:
    name, manufacturer = EXPERT_IDENTITY[record.expert.value]
    return AlgorithmIdentity(
        name=name,
        version=str(record.model_version)[:64] or "unknown",
        manufacturer=manufacturer,
        backend=str(record.backend)[:64] or "unknown",
        weights_digest=record.weights_digest,
        demo=bool(record.demo),
    )


def _vista3d_segmentation(record: ExpertStageResult, labels: np.ndarray,
                          affine: np.ndarray) -> LabelSegmentation | None:
    present = [int(i) for i in np.unique(labels) if i != 0]
    segments = []
    for label in present:
        name = str(record.label_names.get(str(label), f"label {label}")).replace("\\", "/")[:64]
        segments.append(StructureSegment(name, (label,), record.volumes_ml.get(name)))
    if not segments:
        return None
    return LabelSegmentation(labels, affine, tuple(segments))


def _brats_segmentation(record: ExpertStageResult, labels: np.ndarray,
                        affine: np.ndarray) -> LabelSegmentation | None:
    """TC, WT and ET; None when no tumour label lands on the source grid (a SEG of empty segments says nothing)."""
    tumour_ids = sorted({i for _, _, ids in BRATS_REGIONS for i in ids})
    if not np.isin(labels, tumour_ids).any():
        return None
    segments = tuple(StructureSegment(name, ids, record.volumes_ml.get(key)) for name, key, ids in BRATS_REGIONS)
    return LabelSegmentation(labels, affine, segments)


def expert_findings(record: ExpertStageResult, sources: Sequence[Dataset],
                    others: Sequence[Dataset]) -> ExpertFindings:
    algorithm = expert_algorithm(record)
    segmentation = None
    made = record.label_arrays()
    if made is not None:
        labels, affine = labels_on_source_grid(*made, sources)
        if record.expert.value == "BRATS":
            segmentation = _brats_segmentation(record, labels, affine)
        else:
            segmentation = _vista3d_segmentation(record, labels, affine)
    scores = tuple(PathologyScore(name[:64], min(1.0, max(0.0, float(score))))
                   for name, score in record.scores.items())
    return ExpertFindings(algorithm, tuple(sources), segmentation=segmentation, scores=scores,
                          other_evidence=tuple(others))
