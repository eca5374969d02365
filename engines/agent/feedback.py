"""The user turn that feeds an expert result back to the model (VILA_M3_PROTOCOL.md section 5).

VISTA3D and BraTS: the labels of the slice the model saw, drawn over it, plus the legend text; CXR: the prediction
lines, no image. A result that cannot be shown (no label volume, no scores, a shape that does not fit the study, a
segmentation of a radiograph) raises ``ValueError``, which the agent records as an unusable result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from engines.agent import prompts
from engines.agent.rendering import StudyImageRenderer
from engines.agent.request import ConsultationRequest
from engines.experts.base import ExpertName, ExpertResult

__all__ = ["FeedbackTurn", "build_feedback_turn", "BRATS_LABEL_NAMES"]

# Names for the overlay record only: the BraTS feedback text is the fixed training legend.
BRATS_LABEL_NAMES = {1: "necrotic tumor core", 2: "peritumoral edema", 4: "enhancing tumor"}


@dataclass(frozen=True)
class FeedbackTurn:
    text: str
    images: tuple[np.ndarray, ...]  # the overlay, or nothing for CXR
    legend: tuple[tuple[str, str], ...] | None  # (colour, label name) of the overlay, in colour order


@cache
def _vista3d_names() -> dict[int, str]:
    text = resources.files("engines").joinpath("protocol_data", "vista3d_labels.json").read_text(encoding="utf-8")
    return {int(label): name for label, name in json.loads(text)["channel_def"].items()}


def build_feedback_turn(
    expert: ExpertName,
    result: ExpertResult,
    request: ConsultationRequest,
    renderer: StudyImageRenderer,
    slice_index: int | None,
) -> FeedbackTurn:
    """The turn-2 user message for ``result`` of ``expert``, on the slice ``slice_index`` the model saw in turn 1.

    Label names missing from a VISTA3D result come from the bundle's 133-class list.
    """
    expert = ExpertName(expert)
    if ExpertName(result.expert) is not expert:
        raise ValueError(f"the {expert.value} call returned a {ExpertName(result.expert).value} result")
    if expert is ExpertName.CXR:
        return FeedbackTurn(prompts.cxr_feedback_text(result.scores, request.question), (), None)
    if result.label_volume is None:
        raise ValueError(f"the {expert.value} result has no label volume")
    defaults = _vista3d_names() if expert is ExpertName.VISTA3D else BRATS_LABEL_NAMES
    names = {**defaults, **{int(label): name for label, name in result.label_names.items()}}
    overlay = renderer.overlay(request.form, request.expert_input, result.label_volume, names, slice_index)
    if expert is ExpertName.VISTA3D:
        text = prompts.vista3d_feedback_text(prompts.vista3d_legend_text(overlay.legend), request.question)
    else:
        text = prompts.brats_feedback_text(request.question)
    return FeedbackTurn(text, (overlay.image,), tuple(overlay.legend))
