"""The protocol's user-turn texts (VILA_M3_PROTOCOL.md sections 3 and 5) against literal strings from the page."""

from __future__ import annotations

import pytest

from engines.agent import prompts
from engines.agent.prompts import Modality

# The model cards, copied by hand from the protocol's data file (1,373 characters, ends with a newline).
MODEL_CARDS = (
    "Here is a list of available expert models:\n"
    "<BRATS(args)> Modality: MRI, Task: segmentation, Overview: A pre-trained model for volumetric (3D) "
    "segmentation of brain tumor subregions from multimodal MRIs based on BraTS 2018 data, Accuracy: Tumor core "
    "(TC): 0.8559 - Whole tumor (WT): 0.9026 - Enhancing tumor (ET): 0.7905 - Average: 0.8518, Valid args are: "
    "None\n"
    "<VISTA3D(args)> Modality: CT, Task: segmentation, Overview: domain-specialized interactive foundation model "
    "developed for segmenting and annotating human anatomies with precision, Accuracy: 127 organs: 0.792 Dice on "
    "average, Valid args are: 'everything', 'hepatic tumor', 'pancreatic tumor', 'lung tumor', 'bone lesion', "
    "'organs', 'cardiovascular', 'gastrointestinal', 'skeleton', or 'muscles'\n"
    "<VISTA2D(args)> Modality: cell imaging, Task: segmentation, Overview: model for cell segmentation, which "
    "was trained on a variety of cell imaging outputs, including brightfield, phase-contrast, fluorescence, "
    "confocal, or electron microscopy, Accuracy: Good accuracy across several cell imaging datasets, Valid args "
    "are: None\n"
    "<CXR(args)> Modality: chest x-ray (CXR), Task: classification, Overview: pre-trained model which are "
    "trained on large cohorts of data, Accuracy: Good accuracy across several diverse chest x-rays datasets, "
    "Valid args are: None\n"
    "Give the model <NAME(args)> when selecting a suitable expert model.\n"
)

# 18 ensemble pathologies as torchxrayvision names them, deliberately in sorted (the demo's) order.
CXR_SCORES_SORTED = {
    "Atelectasis": 0.62,
    "Cardiomegaly": 0.71,
    "Consolidation": 0.2,
    "Edema": 0.5,
    "Effusion": 0.5001,
    "Emphysema": 0.1,
    "Enlarged Cardiomediastinum": 0.55,
    "Fibrosis": 0.05,
    "Fracture": 0.3,
    "Hernia": 0.01,
    "Infiltration": 0.4,
    "Lung Lesion": 0.2,
    "Lung Opacity": 0.8,
    "Mass": 0.1,
    "Nodule": 0.15,
    "Pleural_Thickening": 0.3,
    "Pneumonia": 0.45,
    "Pneumothorax": 0.9,
}
# The lines in the training order (default_pathologies, Pneumothorax last), "yes" only when the score is > 0.5.
CXR_LINES = (
    "atelectasis: yes\n"
    "consolidation: no\n"
    "infiltration: no\n"
    "edema: no\n"
    "emphysema: no\n"
    "fibrosis: no\n"
    "effusion: yes\n"
    "pneumonia: no\n"
    "pleural thickening: no\n"
    "cardiomegaly: yes\n"
    "nodule: no\n"
    "mass: no\n"
    "hernia: no\n"
    "lung lesion: no\n"
    "fracture: no\n"
    "lung opacity: yes\n"
    "enlarged cardiomediastinum: yes\n"
    "pneumothorax: yes\n"
)


def test_model_cards_file_is_the_protocols_text():
    cards = prompts.load_model_cards()
    assert cards == MODEL_CARDS
    assert len(cards) == 1373
    assert cards.endswith("\n")


@pytest.mark.parametrize("modality", ["CXR", "CT", "MRI"])
def test_first_turn_for_one_image_is_cards_placeholder_modality_sentence_question(modality):
    text = prompts.first_turn_text("What is shown?", modality, MODEL_CARDS)
    assert text == MODEL_CARDS + f"<image> This is a {modality} image.\nWhat is shown?"


def test_first_turn_for_ct_literal():
    text = prompts.first_turn_text("Describe the image in detail.", Modality.CT, "CARDS\n")
    assert text == "CARDS\n<image> This is a CT image.\nDescribe the image in detail."


def test_brats_first_turn_names_four_sequences_in_order():
    text = prompts.brats_first_turn_text("Is there a tumor?", "CARDS\n")
    assert text == (
        "CARDS\nT1(contrast enhanced): <image>, T1: <image>, T2: <image>, FLAIR: <image> These are different MRI "
        "modalities.\nIs there a tumor?"
    )


def test_first_turn_refuses_an_unknown_modality():
    with pytest.raises(ValueError, match="'PET' is not a valid Modality"):
        prompts.first_turn_text("What is shown?", "PET", MODEL_CARDS)


@pytest.mark.parametrize("question", ["", "   ", "Where is <image> the liver?"])
def test_first_turn_refuses_an_empty_question_or_one_with_a_placeholder(question):
    with pytest.raises(ValueError, match="question must"):
        prompts.first_turn_text(question, Modality.CT, MODEL_CARDS)


def test_vista3d_feedback_literal():
    legend = prompts.vista3d_legend_text([("red", "liver"), ("blue", "hepatic tumor")])
    assert legend == "red: liver, blue: hepatic tumor"
    assert prompts.vista3d_feedback_text(legend, "Is there a liver tumor?") == (
        "The results are <image>. The colors in this image describe red: liver, blue: hepatic tumor. "
        "Use this result to respond to this prompt:\nIs there a liver tumor?."
    )


def test_brats_feedback_literal_uses_the_training_legend():
    assert prompts.brats_feedback_text("Describe the lesion.") == (
        "The results are <image>. The colors in this image describe\n"
        "yellow and red: tumor core, only yellow: enhancing tumor, all colors: whole tumor\n"
        "Use this result to respond to this prompt:\nDescribe the lesion.."
    )


def test_cxr_lines_follow_the_training_order_whatever_the_dict_order():
    assert prompts.cxr_prediction_lines(CXR_SCORES_SORTED) == CXR_LINES
    reversed_scores = dict(reversed(list(CXR_SCORES_SORTED.items())))
    assert prompts.cxr_prediction_lines(reversed_scores) == CXR_LINES


def test_cxr_feedback_literal():
    assert prompts.cxr_feedback_text(CXR_SCORES_SORTED, "Describe the image in detail.") == (
        "The resulting predictions are:\n"
        + CXR_LINES
        + ". Analyze the image and take these predictions into account when responding to this prompt:\n"
        "Describe the image in detail."
    )


def test_cxr_threshold_is_strictly_above_one_half():
    assert prompts.cxr_prediction_lines({"Edema": 0.5}) == "edema: no\n"
    assert prompts.cxr_prediction_lines({"Edema": 0.50001}) == "edema: yes\n"


def test_cxr_names_outside_the_ensemble_follow_in_sorted_order():
    lines = prompts.cxr_prediction_lines({"Zeta_Finding": 0.9, "Edema": 0.1, "Alpha_Finding": 0.1})
    assert lines == "edema: no\nalpha finding: no\nzeta finding: yes\n"


def test_cxr_refuses_no_scores_and_nan_scores():
    with pytest.raises(ValueError, match="scores is empty"):
        prompts.cxr_prediction_lines({})
    with pytest.raises(ValueError, match="'Edema' is NaN"):
        prompts.cxr_prediction_lines({"Edema": float("nan")})


def test_label_groups_hold_everything_and_the_card_arguments():
    groups = prompts.load_label_groups()
    for argument in ("everything", "hepatic tumor", "pancreatic tumor", "lung tumor", "bone lesion", "organs"):
        assert argument in groups
    assert groups["hepatic tumor"] == {"liver": 1, "hepatic tumor": 26}
