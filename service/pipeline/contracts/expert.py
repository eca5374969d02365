"""Stage ``expert``'s result: ``ExpertStageResult``, the expert's findings as JSON and its label volume as ``.npz``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from engines.experts.base import ExpertName
from service.pipeline.contracts.base import StageContract
from service.pipeline.stages import Stage

__all__ = ["ExpertStageResult"]


class ExpertStageResult(StageContract):
    """An ``engines.experts.ExpertResult`` between stages. ``labels``: the ``.npz`` of its label volume (``labels``,
    on the grid the expert was given, and that grid's ``affine``), None when it gives none (CXR).
    ``label_names`` maps label ids (as strings: JSON keys) to names; ``weights_digest`` becomes the SR's Device UID;
    ``elapsed_s`` and ``model_window`` (wall clock, start and end) time the model itself."""

    STAGE: ClassVar[Stage] = Stage.EXPERT

    expert: ExpertName
    argument: str | None = None
    backend: str
    model_version: str
    demo: bool
    weights_digest: str
    label_names: dict[str, str] = Field(default_factory=dict)
    volumes_ml: dict[str, float] = Field(default_factory=dict)
    scores: dict[str, float] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    fallback_reason: str = ""
    labels: str | None = None
    elapsed_s: float | None = None
    model_window: tuple[float, float] | None = None

    @classmethod
    def from_expert_result(cls, result, labels_path: Path, weights_digest: str, *, elapsed_s: float | None = None,
                           model_window: tuple[float, float] | None = None) -> ExpertStageResult:
        """``result`` (an ``ExpertResult``) recorded: its label volume (if any) is written to ``labels_path``."""
        from service.pipeline.work.resources import save_arrays

        labels = None
        if result.label_volume is not None:
            labels = save_arrays(labels_path, labels=np.asarray(result.label_volume),
                                 affine=np.asarray(result.affine, dtype=np.float64))
        return cls(
            expert=result.expert, argument=result.argument, backend=result.backend,
            model_version=result.model_version, demo=bool(result.demo), weights_digest=weights_digest,
            label_names={str(k): v for k, v in sorted(result.label_names.items())},
            volumes_ml={k: round(float(v), 4) for k, v in result.volumes_ml.items()},
            scores={k: round(float(v), 6) for k, v in result.scores.items()},
            timings={k: round(float(v), 4) for k, v in result.timings.items()},
            fallback_reason=result.fallback_reason, labels=labels,
            elapsed_s=None if elapsed_s is None else round(elapsed_s, 4), model_window=model_window,
        )

    def label_arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(label volume, its affine), read back; None when the expert gave none."""
        from service.pipeline.work.resources import load_arrays

        if not self.labels:
            return None
        arrays = load_arrays(self.labels)
        return arrays["labels"], arrays["affine"]

    def expert_result(self):
        """The ``ExpertResult`` again (label volume read back), as the agent takes it ready-made."""
        from engines.experts import ExpertResult

        labels = self.label_arrays()
        return ExpertResult(
            expert=self.expert, argument=self.argument, backend=self.backend, model_version=self.model_version,
            demo=self.demo, label_volume=None if labels is None else labels[0],
            affine=None if labels is None else labels[1],
            label_names={int(k): v for k, v in self.label_names.items()}, volumes_ml=dict(self.volumes_ml),
            scores=dict(self.scores), timings=dict(self.timings), fallback_reason=self.fallback_reason,
        )

    def findings_summary(self) -> dict:
        """What the ``reports`` row keeps of it (``Report.findings``, read by the API and the study page)."""
        return self.model_dump(mode="json", include={"expert", "argument", "backend", "model_version", "demo",
                                                     "label_names", "volumes_ml", "scores", "fallback_reason",
                                                     "weights_digest"})
