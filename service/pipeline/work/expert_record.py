"""An ``ExpertResult`` between stages: its small part as JSON (the stage result), its label volume as ``.npz``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from service.pipeline.work.resources import load_arrays, save_arrays

__all__ = ["expert_result_record", "expert_result_from_record", "EXPERT_IDENTITY"]

# How the report names each expert (IHE AI Results: manufacturer and model name of each algorithm).
EXPERT_IDENTITY = {
    "VISTA3D": ("VISTA3D", "NVIDIA"),
    "BRATS": ("BraTS SegResNet", "MONAI"),
    "CXR": ("TorchXRayVision ensemble", "mlmed"),
}


def expert_result_record(result, labels_path: Path, weights_digest: str) -> dict[str, Any]:
    """The JSON form of ``result``; its label volume (if any) is written to ``labels_path``."""
    record: dict[str, Any] = {
        "expert": result.expert.value,
        "argument": result.argument,
        "backend": result.backend,
        "model_version": result.model_version,
        "demo": bool(result.demo),
        "weights_digest": weights_digest,
        "label_names": {str(k): v for k, v in sorted(result.label_names.items())},
        "volumes_ml": {k: round(float(v), 4) for k, v in result.volumes_ml.items()},
        "scores": {k: round(float(v), 6) for k, v in result.scores.items()},
        "timings": {k: round(float(v), 4) for k, v in result.timings.items()},
        "fallback_reason": result.fallback_reason,
        "labels": None,
    }
    if result.label_volume is not None:
        record["labels"] = save_arrays(labels_path, labels=np.asarray(result.label_volume),
                                       affine=np.asarray(result.affine, dtype=np.float64))
    return record


def expert_result_from_record(record: dict[str, Any]):
    """The ``ExpertResult`` again (label volume read back), as the agent takes it ready-made."""
    from engines.experts import ExpertName, ExpertResult

    labels = affine = None
    if record.get("labels"):
        arrays = load_arrays(record["labels"])
        labels, affine = arrays["labels"], arrays["affine"]
    return ExpertResult(
        expert=ExpertName(record["expert"]),
        argument=record.get("argument"),
        backend=record["backend"],
        model_version=record["model_version"],
        demo=bool(record["demo"]),
        label_volume=labels,
        affine=affine,
        label_names={int(k): v for k, v in record.get("label_names", {}).items()},
        volumes_ml=dict(record.get("volumes_ml", {})),
        scores=dict(record.get("scores", {})),
        timings=dict(record.get("timings", {})),
        fallback_reason=record.get("fallback_reason", ""),
    )
