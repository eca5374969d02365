"""VilaM3 on tiny random VILA-format checkpoints (written by engines.vlm.demo), loaded through the real 8B code path."""

from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
import pytest
import torch

from engines.vlm.base import Conversation, GenerationConfig, VlmError
from engines.vlm.checkpoint import CheckpointError, VilaCheckpoint
from engines.vlm.demo import write_demo_checkpoint
from engines.vlm.model import IMAGE_TOKEN_INDEX, VilaM3
from engines.vlm.preprocessing import SiglipPreprocessor
from engines.vlm.templates import render_prompt

RNG = np.random.default_rng(7)
CT = (RNG.random((300, 240, 3)) * 255).astype(np.uint8)
OVERLAY = (RNG.random((128, 128, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    return write_demo_checkpoint(tmp_path_factory.mktemp("vila") / "demo-8b-layout", "llama_3")


@pytest.fixture(scope="module")
def llama3(llama3_dir):
    return VilaM3(llama3_dir, checkpoint_name="Llama3-VILA-M3-8B")


@pytest.fixture(scope="module")
def vicuna(tmp_path_factory):
    directory = write_demo_checkpoint(tmp_path_factory.mktemp("vila") / "demo-small", "vicuna_v1", image_size=70)
    return VilaM3(directory, template="vicuna_v1")


def first_turn(template: str = "llama_3") -> Conversation:
    return Conversation(template).add("user", "Cards.\n<image> This is a CT image.\nWhat organs are visible?", (CT,))


def two_images(template: str = "llama_3") -> Conversation:
    return (
        first_turn(template)
        .add("assistant", "Let me trigger <VISTA3D(everything)>.")
        .add("user", "The results are <image>. Use this result.", (OVERLAY,))
    )


@contextlib.contextmanager
def biased_head(model: VilaM3, bias: dict[int, float]):
    """Make the LM head answer by a fixed preference: logits are exactly ``bias`` (0 elsewhere)."""
    original = model.llm.lm_head
    head = torch.nn.Linear(original.in_features, original.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for token, value in bias.items():
            head.bias[token] = value
    model.llm.lm_head = head
    try:
        yield
    finally:
        model.llm.lm_head = original


def token(model: VilaM3, text: str) -> int:
    return model.tokenizer.convert_tokens_to_ids(text)


def test_checkpoint_has_the_published_layout(llama3_dir):
    checkpoint = VilaCheckpoint.read(llama3_dir)
    config = json.loads((llama3_dir / "config.json").read_text())
    assert config["architectures"] == ["LlavaLlamaModel"] and config["model_type"] == "llava_llama"
    assert {p.name for p in llama3_dir.iterdir()} >= {"config.json", "llm", "vision_tower", "mm_projector"}
    assert (llama3_dir / "vision_tower" / "preprocessor_config.json").is_file()
    assert checkpoint.select_layer == -2 and checkpoint.image_tokens == 196


def test_template_comes_from_the_checkpoint_name_setting(llama3):
    assert llama3.template.value == "llama_3"
    assert llama3.backend_name == "vila-torch-cpu" and llama3.dtype is torch.float32


def test_loading_without_a_template_setting_is_refused(llama3_dir):
    with pytest.raises(ValueError, match="never guessed from the directory name"):
        VilaM3(llama3_dir)


def test_missing_component_is_reported(llama3_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(llama3_dir, broken)
    shutil.rmtree(broken / "mm_projector")
    with pytest.raises(CheckpointError, match="mm_projector/ component is missing"):
        VilaCheckpoint.read(broken)


def test_tokens_around_each_image_are_the_tokenisation_of_the_text_there(llama3):
    prompt = render_prompt(two_images())
    before, middle, after = prompt.split("<image>")
    ids = llama3.tokenize_prompt(prompt)
    first, second = (i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX)
    tokenize = llama3.tokenizer
    assert ids[:first] == tokenize(before).input_ids  # BOS kept once, in front
    assert ids[first + 1 : second] == tokenize(middle, add_special_tokens=False).input_ids
    assert ids[second + 1 :] == tokenize(after, add_special_tokens=False).input_ids
    assert ids[:2] == [tokenize.bos_token_id, tokenize.bos_token_id]  # tokenizer BOS + the template's <|begin_of_text|>


def test_each_image_becomes_196_embeddings_in_place(llama3):
    conversation = two_images()
    run_ids = llama3.tokenize_prompt(render_prompt(conversation))
    images = llama3.encode_images(conversation.images)
    embeds = llama3.embed(run_ids, images)
    first = run_ids.index(IMAGE_TOKEN_INDEX)
    assert images.shape == (2, 196, llama3.checkpoint.hidden_size)
    assert embeds.shape[1] == len(run_ids) - 2 + 2 * 196
    assert torch.equal(embeds[0, first : first + 196], images[0])
    text_after = torch.tensor([run_ids[first + 1]])
    assert torch.equal(embeds[0, first + 196], llama3.llm.get_input_embeddings()(text_after)[0])


def test_small_tower_generalises_the_token_count(vicuna):
    # 70 px / patch 14 = 5 x 5 patches -> padded 6 x 6 -> 9 merged tokens per image
    assert vicuna.checkpoint.image_tokens == 9
    run = vicuna.run(two_images("vicuna_v1"), GenerationConfig(max_new_tokens=1, min_new_tokens=0))
    assert run.image_embeddings == 18
    assert run.generation.prompt_tokens == len(run.input_ids) - 2 + 18


def test_generation_stops_at_the_llama3_eot_token(llama3):
    eot = token(llama3, "<|eot_id|>")
    with biased_head(llama3, {eot: 10.0, 5: 5.0}):
        run = llama3.run(first_turn(), GenerationConfig(max_new_tokens=20, min_new_tokens=0))
    assert run.output_ids == [eot]
    assert run.generation.stopped_by == "stop_token" and run.generation.text == ""


def test_min_new_tokens_holds_back_the_stop_token(llama3):
    eot = token(llama3, "<|eot_id|>")
    with biased_head(llama3, {eot: 10.0, 5: 5.0}):
        run = llama3.run(first_turn(), GenerationConfig(max_new_tokens=20, min_new_tokens=2))
    assert run.output_ids == [5, 5, eot]
    assert run.generation.stopped_by == "stop_token"
    assert run.generation.text == llama3.tokenizer.decode([5, 5]).strip()


def test_eos_also_stops(llama3):
    eos = llama3.tokenizer.eos_token_id
    with biased_head(llama3, {eos: 10.0}):
        run = llama3.run(first_turn(), GenerationConfig(max_new_tokens=20, min_new_tokens=0))
    assert run.output_ids == [eos]


def test_a_second_turn_ends_on_end_of_text_whatever_the_tokenizer_eos(llama3_dir, tmp_path):
    """llama_3 stops on its sep2 <|end_of_text|> as well as on <|eot_id|>, also when the tokenizer's EOS is neither."""
    directory = tmp_path / "eos-elsewhere"
    shutil.copytree(llama3_dir, directory)
    config_file = directory / "llm" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["eos_token"] = "<|start_header_id|>"  # an EOS that is not a stop string of the template
    config_file.write_text(json.dumps(config))
    model = VilaM3(directory, checkpoint_name="Llama3-VILA-M3-8B")
    end_of_text = token(model, "<|end_of_text|>")
    assert model.tokenizer.eos_token_id != end_of_text
    with biased_head(model, {end_of_text: 10.0, 5: 5.0}):
        run = model.run(two_images(), GenerationConfig(max_new_tokens=20, min_new_tokens=2))
    assert run.output_ids == [5, 5, end_of_text]
    assert run.generation.stopped_by == "stop_token"
    assert "<|end_of_text|>" not in run.generation.text and run.generation.text == model.tokenizer.decode([5, 5]).strip()


def test_max_new_tokens_is_respected(llama3):
    with biased_head(llama3, {7: 10.0}):
        run = llama3.run(first_turn(), GenerationConfig(max_new_tokens=5, min_new_tokens=0))
    assert run.output_ids == [7] * 5
    assert run.generation.stopped_by == "max_new_tokens" and run.generation.completion_tokens == 5


def test_vicuna_stops_on_end_of_sentence(vicuna):
    eos = token(vicuna, "</s>")
    with biased_head(vicuna, {eos: 10.0, 9: 1.0}):
        run = vicuna.run(first_turn("vicuna_v1"), GenerationConfig(max_new_tokens=8, min_new_tokens=1))
    assert run.output_ids == [9, eos]


def test_kv_cache_decoding_matches_full_recomputation(llama3):
    conversation = first_turn()
    run = llama3.run(conversation, GenerationConfig(max_new_tokens=6, min_new_tokens=6))
    inputs_embeds = llama3.prompt_embeddings(conversation)
    table = llama3.llm.get_input_embeddings()
    expected: list[int] = []
    with torch.inference_mode():
        for _ in range(6):
            extra = table(torch.tensor(expected, dtype=torch.long)).unsqueeze(0)
            logits = llama3.llm(inputs_embeds=torch.cat([inputs_embeds, extra], dim=1)).logits[0, -1]
            if len(expected) < 6:
                logits[sorted(llama3._stop_token_ids)] = float("-inf")
            expected.append(int(torch.argmax(logits)))
    assert run.output_ids == expected


def test_generation_reports_prompt_and_timings(llama3):
    generation = llama3.generate(first_turn(), GenerationConfig(max_new_tokens=3, min_new_tokens=3))
    assert generation.prompt == render_prompt(first_turn())
    assert generation.prompt_tokens == len(llama3.tokenize_prompt(generation.prompt)) - 1 + 196
    assert 0 < generation.time_to_first_token_s <= generation.total_s
    assert generation.model == "Llama3-VILA-M3-8B"


def test_conversation_in_another_template_is_refused(llama3):
    with pytest.raises(VlmError, match="uses template 'vicuna_v1'"):
        llama3.generate(first_turn("vicuna_v1"))


def test_save_and_reload_keeps_the_logits(llama3, tmp_path):
    saved = llama3.save_pretrained(tmp_path / "resaved")
    reloaded = VilaM3(saved, template="llama_3")
    conversation = two_images()
    assert torch.equal(llama3.prompt_logits(conversation), reloaded.prompt_logits(conversation))
    assert json.loads((saved / "config.json").read_text())["architectures"] == ["LlavaLlamaModel"]


def test_preprocessing_resizes_without_crop_and_normalises():
    preprocessor = SiglipPreprocessor(height=384, width=384)
    white = np.full((100, 300), 255, dtype=np.uint8)  # grey, wide: resized, not cropped or padded
    pixels = preprocessor(white)
    assert pixels.shape == (3, 384, 384) and pixels.dtype == np.float32
    assert np.allclose(pixels, 1.0)


def test_preprocessing_refuses_float_images():
    with pytest.raises(TypeError, match="images must be uint8"):
        SiglipPreprocessor()(np.zeros((4, 4, 3), dtype=np.float32))
