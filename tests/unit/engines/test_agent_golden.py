"""Golden tests: for each expert, both templates and both placeholder forms, the exact texts (and full templated prompts)
of turn 1 and turn 2.

Expected strings are literals copied from VILA_M3_PROTOCOL.md (sections 2, 3 and 5), not computed by the code under
test: the raw form as the training JSON files write it, and the training form as VILA 355fda9's ``preprocess_multimodal``
rewrote it (the model cards lose their final newline to the strip, a space goes before and a newline after each
``<image>``). A ScriptedModel (test double for VILA-M3) answers; the experts are test doubles returning fixed results;
the images are drawn by the real renderer (engines.images): the VISTA3D legend below is the real colour cycle.
"""

from __future__ import annotations

import numpy as np
import pytest

from engines.agent import AgentSettings, ConsultationAgent, ConsultationRequest, Modality, Outcome
from engines.experts.base import ExpertInput, ExpertName
from tests.unit.engines.test_agent_doubles import (
    IDENTITY,
    FixedLabelExpert,
    FixedScoresExpert,
    ScriptedModel,
    brats_study,
    ct_study,
    cxr_image,
)
from tests.unit.engines.test_prompts import CXR_LINES, CXR_SCORES_SORTED, MODEL_CARDS


LLAMA_3_SYSTEM = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, and assist the user with a variety of tasks "
    "using natural language."
)
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

CT_QUESTION = "Is there a hepatic tumor in this image?"
CT_ANSWER_1 = "This looks like a CT image. Let me trigger <VISTA3D(hepatic tumor)>. "
CT_TURN_1 = MODEL_CARDS + "<image> This is a CT image.\nIs there a hepatic tumor in this image?"
CT_TURN_2 = (
    "The results are <image>. The colors in this image describe red: liver, blue: hepatic tumor. "
    "Use this result to respond to this prompt:\nIs there a hepatic tumor in this image?."
)

BRATS_QUESTION = "What abnormality is seen in these images?"
BRATS_ANSWER_1 = "This looks like an MRI image sequence. Let me first trigger <BRATS()>."
BRATS_TURN_1 = (
    MODEL_CARDS + "T1(contrast enhanced): <image>, T1: <image>, T2: <image>, FLAIR: <image> These are different MRI "
    "modalities.\nWhat abnormality is seen in these images?"
)
BRATS_TURN_2 = (
    "The results are <image>. The colors in this image describe\n"
    "yellow and red: tumor core, only yellow: enhancing tumor, all colors: whole tumor\n"
    "Use this result to respond to this prompt:\nWhat abnormality is seen in these images?."
)

CXR_QUESTION = "Describe the image in detail."
CXR_ANSWER_1 = "This looks like an chest x-ray. Let me first trigger <CXR()>."
CXR_TURN_1 = MODEL_CARDS + "<image> This is a CXR image.\nDescribe the image in detail."
CXR_TURN_2 = (
    "The resulting predictions are:\n"
    "atelectasis: yes\nconsolidation: no\ninfiltration: no\nedema: no\nemphysema: no\nfibrosis: no\neffusion: yes\n"
    "pneumonia: no\npleural thickening: no\ncardiomegaly: yes\nnodule: no\nmass: no\nhernia: no\nlung lesion: no\n"
    "fracture: no\nlung opacity: yes\nenlarged cardiomediastinum: yes\npneumothorax: yes\n"
    ". Analyze the image and take these predictions into account when responding to this prompt:\n"
    "Describe the image in detail."
)

# The training form (protocol section 3, "Correction"): what reached VILA's tokenizer in training.
CARDS_STRIPPED = MODEL_CARDS[: -len("\n")]  # the literal cards without their final newline
CT_TURN_1_TRAINED = CARDS_STRIPPED + " <image>\nThis is a CT image.\nIs there a hepatic tumor in this image?"
CT_TURN_2_TRAINED = (
    "The results are <image>\n. The colors in this image describe red: liver, blue: hepatic tumor. "
    "Use this result to respond to this prompt:\nIs there a hepatic tumor in this image?."
)
BRATS_TURN_1_TRAINED = (
    MODEL_CARDS + "T1(contrast enhanced): <image>\n, T1: <image>\n, T2: <image>\n, FLAIR: <image>\nThese are different "
    "MRI modalities.\nWhat abnormality is seen in these images?"
)
BRATS_TURN_2_TRAINED = (
    "The results are <image>\n. The colors in this image describe\n"
    "yellow and red: tumor core, only yellow: enhancing tumor, all colors: whole tumor\n"
    "Use this result to respond to this prompt:\nWhat abnormality is seen in these images?."
)
CXR_TURN_1_TRAINED = CARDS_STRIPPED + " <image>\nThis is a CXR image.\nDescribe the image in detail."
CXR_TURN_2_TRAINED = CXR_TURN_2  # no image in it: VILA's preprocessing leaves it alone

TURN_TEXTS = {
    ("VISTA3D", "raw"): (CT_TURN_1, CT_TURN_2),
    ("VISTA3D", "training"): (CT_TURN_1_TRAINED, CT_TURN_2_TRAINED),
    ("BRATS", "raw"): (BRATS_TURN_1, BRATS_TURN_2),
    ("BRATS", "training"): (BRATS_TURN_1_TRAINED, BRATS_TURN_2_TRAINED),
    ("CXR", "raw"): (CXR_TURN_1, CXR_TURN_2),
    ("CXR", "training"): (CXR_TURN_1_TRAINED, CXR_TURN_2_TRAINED),
}

FINAL_ANSWER = "A final answer from the scripted test double."


def _cases():
    ct_volume, ct_labels = ct_study()
    brats_volume, brats_labels = brats_study()
    return {
        "VISTA3D": (
            ConsultationRequest(CT_QUESTION, Modality.CT, ExpertInput(ct_volume, IDENTITY)),
            FixedLabelExpert(ExpertName.VISTA3D, ct_labels, {1: "liver", 26: "hepatic tumor", 20: "lung"}),
            CT_ANSWER_1,
            1,  # images in turn 1
            1,  # images in turn 2
        ),
        "BRATS": (
            ConsultationRequest(
                BRATS_QUESTION, Modality.MRI, ExpertInput(brats_volume, IDENTITY), brats_sequences=True
            ),
            FixedLabelExpert(ExpertName.BRATS, brats_labels, {1: "TC", 2: "ED", 4: "ET"}),
            BRATS_ANSWER_1,
            4,
            1,
        ),
        "CXR": (
            ConsultationRequest(CXR_QUESTION, Modality.CXR, ExpertInput(cxr_image())),
            FixedScoresExpert(CXR_SCORES_SORTED),
            CXR_ANSWER_1,
            1,
            0,
        ),
    }


def _templated(template: str, turn_1: str, answer_1: str, turn_2: str) -> tuple[str, str]:
    """The literal full prompts of section 2, assembled from the literal pieces above."""
    if template == "llama_3":
        user, assistant, eot = (
            "<|start_header_id|>user<|end_header_id|>\n\n",
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "<|eot_id|>",
        )
        first = LLAMA_3_SYSTEM + eot + user + turn_1 + eot + assistant
        second = first + answer_1 + eot + user + turn_2 + eot + assistant
        return first, second
    first = VICUNA_V1_SYSTEM + " USER: " + turn_1 + " ASSISTANT:"
    second = first + " " + answer_1 + "</s>USER: " + turn_2 + " ASSISTANT:"
    return first, second


@pytest.mark.parametrize("form", ["training", "raw"])
@pytest.mark.parametrize("template", ["llama_3", "vicuna_v1"])
@pytest.mark.parametrize("expert_name", ["VISTA3D", "BRATS", "CXR"])
def test_turn_texts_and_templated_prompts_are_exactly_the_protocols(expert_name, template, form):
    request, expert, answer_1, images_1, images_2 = _cases()[expert_name]
    turn_1, turn_2 = TURN_TEXTS[(expert_name, form)]
    model = ScriptedModel(answer_1, FINAL_ANSWER)
    agent = ConsultationAgent(model, [expert], template=template, settings=AgentSettings(placeholder_form=form))

    consultation = agent.consult(request)

    transcript = consultation.transcript
    assert transcript.outcome is Outcome.ANSWERED_WITH_EXPERT, transcript.detail
    assert transcript.final_answer == FINAL_ANSWER
    assert len(model.conversations) == 2
    assert model.user_texts(0) == [turn_1]
    assert model.user_texts(1) == [turn_1, turn_2]
    assert [m.text for m in model.conversations[1] if m.role == "assistant"] == [answer_1]
    assert len(model.conversations[0][0].image_shapes) == images_1
    assert len(model.conversations[1][2].image_shapes) == images_2
    expected_first, expected_second = _templated(template, turn_1, answer_1, turn_2)
    assert [turn.user_text for turn in transcript.turns] == [turn_1, turn_2]
    assert transcript.turns[0].templated_prompt == expected_first
    assert transcript.turns[1].templated_prompt == expected_second
    assert transcript.template == template
    assert transcript.settings["placeholder_form"] == form
    assert transcript.expert_call.expert == expert_name
    assert expert.calls == [("hepatic tumor" if expert_name == "VISTA3D" else None)]


def test_the_training_form_is_the_default():
    request, expert, answer_1, *_ = _cases()["VISTA3D"]
    model = ScriptedModel(answer_1, FINAL_ANSWER)
    ConsultationAgent(model, [expert], template="llama_3").consult(request)
    assert model.user_texts(1) == [CT_TURN_1_TRAINED, CT_TURN_2_TRAINED]


def test_vista3d_overlay_is_on_the_slice_the_model_saw_with_the_legend_in_colour_order():
    request, expert, *_ = _cases()["VISTA3D"]
    model = ScriptedModel(CT_ANSWER_1, FINAL_ANSWER)
    consultation = ConsultationAgent(model, [expert], template="llama_3").consult(request)
    transcript = consultation.transcript
    assert transcript.slice.index == 3 and transcript.slice.count == 6  # the middle of 6 slices
    assert transcript.expert_call.overlay_legend == [["red", "liver"], ["blue", "hepatic tumor"]]
    assert consultation.overlay.dtype == np.uint8 and consultation.overlay.shape == (8, 8, 3)
    # the overlay shown is the turn-2 image: same pixels the model received
    assert model.conversations[1][2].image_shapes == ((8, 8, 3),)


def test_cxr_prompt_lines_literal_matches_the_prompt_module_literal():
    assert CXR_TURN_2.startswith("The resulting predictions are:\n" + CXR_LINES + ". Analyze")


def test_agent_refuses_an_unknown_template_when_it_is_built():
    with pytest.raises(ValueError, match="unknown conversation template 'chatml'"):
        ConsultationAgent(ScriptedModel(), [], template="chatml")


def test_settings_are_recorded_and_generation_bounds_are_passed_to_the_model():
    request, expert, answer_1, *_ = _cases()["CXR"]
    model = ScriptedModel(answer_1, FINAL_ANSWER)
    settings = AgentSettings(max_new_tokens=64, min_new_tokens=2, max_total_new_tokens=100, generation_timeout_s=9.0)
    transcript = ConsultationAgent(model, [expert], template="llama_3", settings=settings).consult(request).transcript
    assert [c.max_new_tokens for c in model.configs] == [64, 64]
    assert all(c.temperature == 0.0 and c.timeout_s == 9.0 and c.min_new_tokens == 2 for c in model.configs)
    assert transcript.settings["max_new_tokens"] == 64
    assert transcript.backend == "scripted-test-double"
