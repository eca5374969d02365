"""VILA's conversation templates: the exact strings of VILA 355fda9 llava/conversation.py get_prompt()."""

from __future__ import annotations

import numpy as np
import pytest

from engines.vlm.base import Conversation
from engines.vlm.templates import (
    render_prompt,
    single_turn_wrapping,
    stop_strings,
    template_for_checkpoint,
)

IMAGE = np.zeros((8, 8, 3), dtype=np.uint8)


def two_turn(template: str) -> Conversation:
    return (
        Conversation(template)
        .add("user", "<image> This is a CT image.\nWhat organs?", (IMAGE,))
        .add("assistant", "Let me trigger <VISTA3D(everything)>.")
        .add("user", "The results are <image>. Describe.", (IMAGE,))
    )


def test_llama_3_two_turn_prompt_is_vilas_string():
    assert render_prompt(two_turn("llama_3")) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision assistant. "
        "You are able to understand the visual content that the user provides, and assist the user with a variety of tasks "
        "using natural language.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image> This is a CT image.\nWhat organs?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nLet me trigger <VISTA3D(everything)>.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nThe results are <image>. Describe.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_vicuna_v1_two_turn_prompt_is_vilas_string():
    assert render_prompt(two_turn("vicuna_v1")) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
        "and polite answers to the user's questions. USER: <image> This is a CT image.\nWhat organs? "
        "ASSISTANT: Let me trigger <VISTA3D(everything)>.</s>USER: The results are <image>. Describe. ASSISTANT:"
    )


def test_hermes_2_two_turn_prompt_is_vilas_string():
    assert render_prompt(two_turn("hermes-2")) == (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\n<image> This is a CT image.\nWhat organs?<|im_end|>"
        "<|im_start|>assistant\nLet me trigger <VISTA3D(everything)>.<|im_end|>"
        "<|im_start|>user\nThe results are <image>. Describe.<|im_end|>"
        "<|im_start|>assistant\n"
    )


def test_one_turn_vicuna_prompt_ends_with_assistant_colon():
    prompt = render_prompt(Conversation("vicuna_v1").add("user", "Describe the image in detail."))
    assert prompt.endswith(" USER: Describe the image in detail. ASSISTANT:")


@pytest.mark.parametrize(
    ("template", "stop"),
    [("llama_3", ("<|eot_id|>", "<|end_of_text|>")), ("vicuna_v1", ("</s>",)), ("hermes-2", ("<|im_end|>",))],
)
def test_stop_strings_are_vilas_per_template_and_llama_3_adds_its_sep2(template, stop):
    assert stop_strings(template) == stop


@pytest.mark.parametrize("template", ["llama_3", "vicuna_v1", "hermes-2"])
def test_single_turn_wrapping_reconstructs_the_multi_turn_prompt(template):
    prompt = render_prompt(two_turn(template))
    prefix, suffix = single_turn_wrapping(template)
    inner = prompt[len(prefix) : len(prompt) - len(suffix)]
    one_turn = render_prompt(Conversation(template).add("user", inner, (IMAGE, IMAGE)))
    assert prompt.startswith(prefix) and prompt.endswith(suffix)
    assert one_turn == prompt


def test_known_checkpoints_map_to_their_training_templates():
    assert template_for_checkpoint("Llama3-VILA-M3-8B") == "llama_3"
    assert template_for_checkpoint("Llama3-VILA-M3-3B") == "vicuna_v1"
    assert template_for_checkpoint("Llama3-VILA-M3-13B") == "vicuna_v1"


def test_unknown_checkpoint_name_asks_for_an_explicit_template():
    with pytest.raises(ValueError, match="set the template explicitly"):
        template_for_checkpoint("/models/Llama3-VILA-M3-8B")


def test_unknown_template_is_refused():
    with pytest.raises(ValueError, match="unknown conversation template 'llama3'"):
        render_prompt(Conversation("llama3").add("user", "hi"))


def test_turns_must_alternate_starting_with_user():
    conversation = Conversation("vicuna_v1").add("user", "a").add("user", "b")
    with pytest.raises(ValueError, match="turn 1 is 'user' but 'assistant' was expected"):
        render_prompt(conversation)


def test_conversation_must_end_with_a_user_turn():
    conversation = Conversation("llama_3").add("user", "a").add("assistant", "b")
    with pytest.raises(ValueError, match="must end with a user turn"):
        render_prompt(conversation)


def test_empty_turn_is_refused():
    with pytest.raises(ValueError, match="turn 0 is empty"):
        render_prompt(Conversation("llama_3").add("user", ""))
