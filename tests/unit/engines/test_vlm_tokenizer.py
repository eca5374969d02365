"""The 3B/13B tokenizer as VILA 355fda9 loads it (slow SentencePiece ``LlamaTokenizer``, ``legacy=False``), on a tiny
SentencePiece model in the real Llama-2 format.

``data/tiny_llama2_tokenizer/`` holds the model (trained by ``engines.vlm.demo.train_sentencepiece_model``), the
``tokenizer_config.json`` a Llama-2 checkpoint ships (``"legacy": true``: VILA overrides it) and ``golden.json``: the ids
transformers 4.36.2 (VILA's own version, run once by ``make_golden.py`` there) gives for texts around ``</s>USER:``, for
text that starts with a space or a newline, and for whole prompts tokenised chunk by chunk at each ``<image>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.agent import prompts
from engines.vlm.tokenizer import (
    IMAGE_TOKEN_INDEX,
    SentencePieceLlamaTokenizer,
    load_tokenizer,
    tokenize_with_image_sentinels,
)

DATA = Path(__file__).parent / "data" / "tiny_llama2_tokenizer"
GOLDEN = json.loads((DATA / "golden.json").read_text())


@pytest.fixture(scope="module")
def tokenizer() -> SentencePieceLlamaTokenizer:
    loaded = load_tokenizer(DATA)
    assert isinstance(loaded, SentencePieceLlamaTokenizer)
    return loaded


def test_golden_ids_come_from_vilas_transformers_version():
    assert GOLDEN["transformers"] == "4.36.2"


@pytest.mark.parametrize("text", list(GOLDEN["texts"]))
def test_ids_equal_vilas_slow_legacy_false_tokenizer(tokenizer, text):
    assert tokenizer(text).input_ids == GOLDEN["texts"][text]


@pytest.mark.parametrize("name", list(GOLDEN["prompts"]))
def test_whole_prompts_chunked_at_each_image_equal_vilas(tokenizer, name):
    entry = GOLDEN["prompts"][name]
    assert tokenize_with_image_sentinels(tokenizer, entry["prompt"]) == entry["ids"]


def test_no_space_token_before_user_after_end_of_sentence(tokenizer):
    ids = tokenizer("ASSISTANT: ok</s>USER: next").input_ids
    after = tokenizer.convert_ids_to_tokens(ids[ids.index(tokenizer.eos_token_id) + 1])
    assert after.startswith("U") and not after.startswith("\u2581")  # legacy=False: no space before USER after </s>


def test_text_after_each_image_starts_with_a_space_token_then_the_newline(tokenizer):
    prompt = GOLDEN["prompts"]["ct_turn_2_training"]["prompt"]
    ids = tokenize_with_image_sentinels(tokenizer, prompt)
    positions = [index for index, token in enumerate(ids) if token == IMAGE_TOKEN_INDEX]
    assert len(positions) == 2
    for position in positions:  # the training form: "<image>\n..."; VILA's chunk gets the prefix space
        space, newline = (tokenizer.convert_ids_to_tokens(i) for i in ids[position + 1 : position + 3])
        assert space == "\u2581" and newline in ("\n", "<0x0A>")


def test_the_raw_and_training_forms_tokenise_differently_after_the_image(tokenizer):
    raw = GOLDEN["prompts"]["ct_turn_1_raw"]["ids"]
    trained = GOLDEN["prompts"]["ct_turn_1_training"]["ids"]
    assert raw != trained
    assert prompts.as_trained(GOLDEN["prompts"]["ct_turn_1_raw"]["prompt"]) != GOLDEN["prompts"]["ct_turn_1_raw"]["prompt"]


def test_decoding_gives_the_text_back(tokenizer):
    text = "ASSISTANT: This looks like a CT image.</s>"
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == "ASSISTANT: This looks like a CT image."
    assert tokenizer.decode(tokenizer(text).input_ids) == "<s> ASSISTANT: This looks like a CT image.</s>"  # as 4.36


def test_an_added_special_token_is_never_split(tokenizer, tmp_path):
    copy = SentencePieceLlamaTokenizer.from_directory(DATA)
    (image_id,) = copy.add_special_tokens(["<image>"])
    assert image_id == len(tokenizer)
    ids = copy("a <image>\nb").input_ids
    assert ids.count(image_id) == 1
    copy.save_pretrained(tmp_path)
    assert SentencePieceLlamaTokenizer.from_directory(tmp_path)("a <image>\nb").input_ids == ids


def test_transformers_5_llama_tokenizer_is_not_vilas_on_text_that_starts_with_a_space():
    """Why engines.vlm.tokenizer implements the slow algorithm itself: transformers 5 ignores use_fast=False and its
    LlamaTokenizer(legacy=False) drops the space token VILA's tokenizer keeps (the raw form's "<image> This is...")."""
    from transformers import AutoTokenizer

    text = " This is a CT image.\nDescribe the image in detail."
    ids = AutoTokenizer.from_pretrained(DATA, legacy=False)(text).input_ids
    assert ids != GOLDEN["texts"][text]
    assert ids[1:] == GOLDEN["texts"][text][2:]  # the same, one "\u2581" token fewer


def test_a_checkpoint_without_a_sentencepiece_model_gets_transformers_tokenizer(tmp_path):
    from engines.vlm.demo import write_demo_checkpoint

    directory = write_demo_checkpoint(tmp_path / "llama3", "llama_3", image_size=28, patch_size=14)
    assert not isinstance(load_tokenizer(directory / "llm"), SentencePieceLlamaTokenizer)
