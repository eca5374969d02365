"""The user turn that feeds an expert result back to the model (VILA_M3_PROTOCOL.md section 5).

VISTA3D and BraTS: the labels of the slice the model saw, drawn over it, plus the legend text; CXR: the prediction
lines, no image. A result that cannot be shown (no label volume, no scores, a shape that does not fit the study, a
segmentation of a radiograph) raises ``ValueError``, which the agent records as an unusable result.

The legend never contradicts the colours: it is written from the labels drawn on the overlay (VISTA3D always; BraTS
from the labels present, which is the training legend exactly when labels 1, 2 and 4 are all drawn). When the slice
the model saw holds none of the result's labels, the overlay goes to the slice where the result has the most (for
BraTS, one holding all three tumour labels when there is one) and the turn says so in the transcript; when the result
has no label anywhere, the text says in plain words that nothing was found instead of an empty legend.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from engines.agent import prompts
from engines.agent.rendering import RenderedOverlay, StudyImageRenderer
from engines.agent.request import ConsultationRequest
from engines.agent.slices import BRATS_TUMOUR_LABELS
from engines.experts.base import ExpertName, ExpertResult

__all__ = ["FeedbackTurn", "build_feedback_turn", "BRATS_LABEL_NAMES"]

# Names for the overlay record only: the BraTS feedback text names regions, not labels.
BRATS_LABEL_NAMES = {1: "necrotic tumor core", 2: "peritumoral edema", 4: "enhancing tumor"}


@dataclass(frozen=True)
class FeedbackTurn:
    text: str  # the raw text (the agent puts it in the placeholder form the settings chose)
    images: tuple[np.ndarray, ...]  # the overlay, or nothing for CXR
    legend: tuple[tuple[str, str], ...] | None  # (colour, label name) of the overlay, in colour order
    overlay_slice: int | None = None  # the axial slice the overlay is drawn on
    note: str = ""  # why the overlay is not on the slice the model saw, or that the expert found nothing


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
    label_groups: Mapping[str, Any] | None = None,
) -> FeedbackTurn:
    """The turn-2 user message for ``result`` of ``expert``, on the slice ``slice_index`` the model saw in turn 1.

    Label names missing from a VISTA3D result come from the bundle's 133-class list; ``label_groups`` (VISTA3D argument
    -> {name: id}) names what was looked for when nothing was found.
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
    note = ""
    if not overlay.legend:
        overlay, note = _overlay_where_labels_are(expert, result, request, renderer, names, overlay)
    if not overlay.legend:
        structures = _looked_for(result.argument, label_groups) if expert is ExpertName.VISTA3D else ()
        text = prompts.nothing_found_feedback_text(expert.value, request.question, structures)
    elif expert is ExpertName.VISTA3D:
        text = prompts.vista3d_feedback_text(prompts.vista3d_legend_text(overlay.legend), request.question)
    else:
        text = prompts.brats_feedback_text(request.question, prompts.brats_legend_text(_colour_of(overlay)))
    return FeedbackTurn(text, (overlay.image,), tuple(overlay.legend), overlay.slice_index, note)


def _overlay_where_labels_are(
    expert: ExpertName,
    result: ExpertResult,
    request: ConsultationRequest,
    renderer: StudyImageRenderer,
    names: Mapping[int, str],
    shown: RenderedOverlay,
) -> tuple[RenderedOverlay, str]:
    """The shown slice holds none of the result's labels: draw on the slice where it has most, if any."""
    require_all = BRATS_TUMOUR_LABELS if expert is ExpertName.BRATS else None
    best = renderer.best_slice(result.label_volume, request.expert_input.affine, None, require_all=require_all)
    where = f"slice {shown.slice_index}" if shown.slice_index is not None else "the slice the model saw"
    if best is None:
        return shown, f"{expert.value} found nothing in this study: no colours on {where}, and the text says so"
    moved = renderer.overlay(request.form, request.expert_input, result.label_volume, names, best)
    return moved, (
        f"{where} (the one the model saw) holds none of the {expert.value} labels: the overlay is drawn on slice {best}, "
        "where the result has the most"
    )


def _colour_of(overlay: RenderedOverlay) -> dict[int, str]:
    """Label id -> colour of the overlay (by the renderer's label ids, else by the BraTS label names)."""
    if overlay.labels and len(overlay.labels) == len(overlay.legend):
        return {label: colour for label, (colour, _) in zip(overlay.labels, overlay.legend)}
    by_name = {name: label for label, name in BRATS_LABEL_NAMES.items()}
    return {by_name[name]: colour for colour, name in overlay.legend if name in by_name}


def _looked_for(argument: str | None, label_groups: Mapping[str, Any] | None) -> tuple[str, ...]:
    group = (label_groups or {}).get(argument or "everything")
    return tuple(group) if isinstance(group, dict) else ()
