"""The exact user-turn texts VILA-M3 was trained on (VILA_M3_PROTOCOL.md sections 3 and 5), byte for byte.

Every function here returns one message text; the ``<image>`` placeholders it contains are filled by the images the
agent attaches to that message, in order. Where the reference demo drifted from the training data, the training form is
used (noted beside each function).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources

from engines.experts.labels import CXR_PATHOLOGIES

__all__ = [
    "Modality",
    "PlaceholderForm",
    "as_trained",
    "text_as_sent",
    "MODEL_CARDS_LENGTH",
    "BRATS_TRAINING_LEGEND",
    "CXR_TRAINING_PATHOLOGY_ORDER",
    "load_model_cards",
    "load_label_groups",
    "first_turn_text",
    "brats_first_turn_text",
    "vista3d_legend_text",
    "vista3d_feedback_text",
    "brats_feedback_text",
    "brats_legend_text",
    "nothing_found_feedback_text",
    "cxr_prediction_lines",
    "cxr_feedback_text",
]

MODEL_CARDS_LENGTH = 1373  # characters of vila_m3_model_cards.txt, trailing newline included

# Section 5: the one legend every BraTS training conversation used, whatever the slice showed.
BRATS_TRAINING_LEGEND = "yellow and red: tumor core, only yellow: enhancing tumor, all colors: whole tumor"

# Section 5 says each CXR line is "{name}: yes|no\n" but not in which order. The training predictions files were
# written by the reference's make_ensemble_probs.py: a dict filled by walking the models in order,
# densenet121-res224-all first, each in torchxrayvision's default_pathologies order, skipping a pathology for a model
# outside its group. Pneumothorax is only in the resnet50-res512-all group (the last model), so it was added last;
# every other pathology keeps default_pathologies order. We therefore put the lines in this order, whatever order the
# expert's dict has; pathologies not listed here (none for the 18-class ensemble) follow in sorted order. The demo's
# sorted order is NOT used.
CXR_TRAINING_PATHOLOGY_ORDER: tuple[str, ...] = (
    *(name for name in CXR_PATHOLOGIES if name != "Pneumothorax"),
    "Pneumothorax",
)
CXR_YES_THRESHOLD = 0.5  # training: "yes" when score > 0.5 (strictly; the demo's >= is the drift)


class Modality(str, enum.Enum):
    """The MOD word of the first turn's modality sentence (from DICOM, never guessed from file names)."""

    CXR = "CXR"
    CT = "CT"
    MRI = "MRI"


class PlaceholderForm(str, enum.Enum):
    """Which form of a user turn with ``<image>`` placeholders reaches the tokenizer.

    ``training`` (the default): the form VILA-M3 was trained on, after VILA's multimodal preprocessing (see
    :func:`as_trained`). ``raw``: the strings as the training JSON files and the reference's evaluation scripts write
    them (the CXR evaluation script sends these unchanged, since it does not run that preprocessing).
    """

    TRAINING = "training"
    RAW = "raw"


_IMAGE = "<image>"


def as_trained(text: str) -> str:
    """A user turn as VILA 355fda9's training data loader rewrote it before tokenisation.

    Our own implementation of what NVlabs/VILA commit 355fda9 ``llava/data/dataset.py`` ``preprocess_multimodal``
    does to every sentence holding ``<image>`` (VILA-M3 sets neither ``mm_use_im_start_end`` nor an ``mmtag``
    template): the text is cut at each placeholder, every piece is stripped, a space is appended to each piece that
    comes before a placeholder (a stripped piece never ends with a newline, so each one gets it), the pieces are joined
    by ``"<image>\n"`` and the whole is stripped; every placeholder is then followed by exactly one newline. Text
    without a placeholder is returned unchanged (the CXR feedback turn, follow-up turns).

    So ``...expert model.\n<image> This is a CT image.\nQ`` becomes ``...expert model. <image>\nThis is a CT
    image.\nQ`` and ``The results are <image>. The colors...`` becomes ``The results are <image>\n. The colors...``.
    """
    if _IMAGE not in text:
        return text
    pieces = [piece.strip() for piece in text.split(_IMAGE)]
    joined = (_IMAGE + "\n").join([piece + " " for piece in pieces[:-1]] + [pieces[-1]]).strip()
    return joined.replace(_IMAGE, _IMAGE + "\n").replace(_IMAGE + "\n\n", _IMAGE + "\n")


def text_as_sent(text: str, form: PlaceholderForm | str) -> str:
    """``text`` in the placeholder form the settings chose (``training`` or ``raw``)."""
    return as_trained(text) if PlaceholderForm(form) is PlaceholderForm.TRAINING else text


@cache
def load_model_cards() -> str:
    """The 1,373-character expert list put in front of the first user turn (engines/protocol_data)."""
    text = resources.files("engines").joinpath("protocol_data", "vila_m3_model_cards.txt").read_text(encoding="utf-8")
    if len(text) != MODEL_CARDS_LENGTH or not text.endswith("\n"):
        raise ValueError(
            f"engines/protocol_data/vila_m3_model_cards.txt has {len(text)} characters, expected {MODEL_CARDS_LENGTH} "
            "ending with a newline: restore it from the protocol page; the model only behaves as trained with the "
            "exact text"
        )
    return text


@cache
def _label_groups_json() -> str:
    return resources.files("engines").joinpath("protocol_data", "vila_m3_label_groups.json").read_text(encoding="utf-8")


def load_label_groups() -> dict[str, dict[str, int] | str]:
    """VISTA3D argument -> {label name: class id}; ``everything`` maps to a path string (the bundle's own set)."""
    return json.loads(_label_groups_json())


def _check_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be a non-empty string: pass the task, e.g. 'Describe the image in detail.'")
    if "<image>" in question:
        raise ValueError("question must not contain '<image>': the agent places the image placeholders itself")
    return question


def first_turn_text(question: str, modality: Modality | str, model_cards: str) -> str:
    """One 2D image: ``MODEL_CARDS + "<image> This is a {MOD} image.\\n" + question``.

    Training form with a space after ``<image>`` (the demo writes ``"<image>This is..."``).
    """
    modality = Modality(modality)
    return model_cards + f"<image> This is a {modality.value} image.\n" + _check_question(question)


def brats_first_turn_text(question: str, model_cards: str) -> str:
    """Four co-registered MRI sequences, images attached in the order T1c, T1, T2, FLAIR."""
    return (
        model_cards
        + "T1(contrast enhanced): <image>, T1: <image>, T2: <image>, FLAIR: <image> "
        + "These are different MRI modalities.\n"
        + _check_question(question)
    )


def vista3d_legend_text(legend: Sequence[tuple[str, str]]) -> str:
    """``"{color}: {label name}"`` joined by ``", "``, in the overlay's order."""
    return ", ".join(f"{color}: {name}" for color, name in legend)


def vista3d_feedback_text(legend: str, question: str) -> str:
    """The user turn after VISTA3D; the overlay image fills its ``<image>``. Training appends "." to the question."""
    return (
        f"The results are <image>. The colors in this image describe {legend}. "
        f"Use this result to respond to this prompt:\n{_check_question(question)}."
    )


def brats_feedback_text(question: str, legend: str = BRATS_TRAINING_LEGEND) -> str:
    """The user turn after BraTS (legend on its own line); the overlay image fills its ``<image>``."""
    return (
        f"The results are <image>. The colors in this image describe\n{legend}\n"
        f"Use this result to respond to this prompt:\n{_check_question(question)}."
    )


BRATS_NECROTIC_CORE, BRATS_EDEMA, BRATS_ENHANCING = 1, 2, 4


def brats_legend_text(colour_of: Mapping[int, str]) -> str:
    """The BraTS legend for the labels drawn on the shown slice (``colour_of``: label id -> overlay colour).

    With labels 1, 2 and 4 all drawn (red, blue, yellow) this is exactly the training legend. With fewer, it is
    written from the labels present as the reference demo does (Project-MONAI/VLM-Radiology-Agent-Framework
    ``m3/demo/experts/expert_monai_brats.py``, ``segmentation_to_string``): "tumor core" only when labels 1 and 4 are
    both drawn, "only <colour of 4>: enhancing tumor" when 4 is, "all colors: whole tumor" when any is; but with the
    colours in the training sentence's order (enhancing first: "yellow and red"), where the demo writes them the other
    way round. So the legend never names a colour the image does not show, nor gives a colour another label's meaning.
    """
    necrotic, edema, enhancing = (colour_of.get(label) for label in (BRATS_NECROTIC_CORE, BRATS_EDEMA, BRATS_ENHANCING))
    if necrotic is None and edema is None and enhancing is None:
        raise ValueError("no BraTS tumour label (1, 2 or 4) is drawn: there is no legend to write")
    clauses = []
    if necrotic is not None and enhancing is not None:
        clauses.append(f"{enhancing} and {necrotic}: tumor core")
    if enhancing is not None:
        clauses.append(f"only {enhancing}: enhancing tumor")
    clauses.append("all colors: whole tumor")
    return ", ".join(clauses)


def nothing_found_feedback_text(expert: str, question: str, structures: Sequence[str] = ()) -> str:
    """The user turn after a segmentation expert that found nothing anywhere in the study (no legend to write).

    Not a training string (training never had an empty result): the overlay image still fills ``<image>`` (the slice
    the model saw, with no colours), and the sentence says in plain words that nothing was found, in the place and
    punctuation of the VISTA3D (``structures`` named) or BraTS training sentence.
    """
    question = _check_question(question)
    if expert == "BRATS":
        return (
            "The results are <image>. There are no colors in this image: no brain tumor was found in this scan.\n"
            f"Use this result to respond to this prompt:\n{question}."
        )
    if structures and len(structures) <= 6:
        named = structures[0] if len(structures) == 1 else ", ".join(structures[:-1]) + " or " + structures[-1]
        found = f"{expert} found no {named} in this scan"
    else:
        found = f"{expert} found none of the structures it segments in this scan"
    return (
        f"The results are <image>. There are no colors in this image: {found}. "
        f"Use this result to respond to this prompt:\n{question}."
    )


def _cxr_line_order(names: Sequence[str]) -> list[str]:
    known = [name for name in CXR_TRAINING_PATHOLOGY_ORDER if name in names]
    return known + sorted(name for name in names if name not in CXR_TRAINING_PATHOLOGY_ORDER)


def cxr_prediction_lines(scores: Mapping[str, float]) -> str:
    """Each pathology as ``"{lower-cased, '_' -> ' '}: yes|no\\n"`` (yes when score > 0.5), concatenated.

    The order is CXR_TRAINING_PATHOLOGY_ORDER (see there why), not the order of ``scores``.
    """
    if not scores:
        raise ValueError("scores is empty: the CXR expert must return a score per pathology")
    lines = []
    for name in _cxr_line_order(list(scores)):
        score = float(scores[name])
        if math.isnan(score):
            raise ValueError(f"score of {name!r} is NaN: the CXR expert produced no usable value")
        answer = "yes" if score > CXR_YES_THRESHOLD else "no"
        lines.append(f"{name.lower().replace('_', ' ')}: {answer}\n")
    return "".join(lines)


def cxr_feedback_text(scores: Mapping[str, float], question: str) -> str:
    """The user turn after the CXR expert (no image); training form, not the demo's."""
    return (
        f"The resulting predictions are:\n{cxr_prediction_lines(scores)}. Analyze the image and take these predictions "
        f"into account when responding to this prompt:\n{_check_question(question)}"
    )
