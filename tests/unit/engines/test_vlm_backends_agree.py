"""Both backends send the model the same tokens and answer alike (issue 14 points 5 and 6), on tiny real-format VILA
checkpoints: ``llama_3`` (byte-level BPE) and ``vicuna_v1`` (a SentencePiece ``tokenizer.model``).

The ``openai`` backend talks to tests/support/openai_double.py serving the same checkpoint through
tests/support/trtllm_emulation.py (TEST DOUBLE of trtllm-serve's VILA path: whole-prompt tokenisation with ``<image>``
as a special token, as TensorRT-LLM does). For every conversation of ``engines.vlm.backend_check`` (the three experts,
first and feedback turns) and both placeholder forms, the ids the server built equal the in-process ids; with
TensorRT-LLM's own ``"\\n"`` after images (what the deploy patch removes) they do not, and the check says so.
"""

from __future__ import annotations

import pytest

from engines.vlm.backend_check import Verdict, check_cases, compare_backends
from engines.vlm.base import GenerationConfig
from engines.vlm.demo import write_demo_checkpoint
from engines.vlm.model import IMAGE_TOKEN_INDEX, VilaM3
from engines.vlm.openai_backend import OpenAIVisionLanguageModel
from engines.vlm.templates import render_prompt
from tests.support.openai_double import OpenAIServerDouble
from tests.support.trtllm_emulation import ServingDefects, TrtllmVilaEmulation

TEMPLATES = ("llama_3", "vicuna_v1")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("vila-agree")
    return {template: write_demo_checkpoint(root / template, template, image_size=56, patch_size=14)
            for template in TEMPLATES}


@pytest.fixture(scope="module")
def models(checkpoints):
    return {template: VilaM3(directory, template=template) for template, directory in checkpoints.items()}


def _served(model: VilaM3, defects: ServingDefects = ServingDefects()) -> OpenAIServerDouble:
    return OpenAIServerDouble(model_id="vila1.5-demo", serving=TrtllmVilaEmulation(model, defects)).start()


@pytest.mark.parametrize("form", ["training", "raw"])
@pytest.mark.parametrize("template", TEMPLATES)
def test_the_server_builds_the_in_process_ids_for_every_conversation(models, template, form):
    model = models[template]
    cases = check_cases(template, form)
    server = _served(model)
    try:
        backend = OpenAIVisionLanguageModel(server.url, template=template)
        for case in cases:
            backend.generate(case.conversation, GenerationConfig(max_new_tokens=1, min_new_tokens=0))
    finally:
        server.stop()
    assert len(server.serving.served_ids) == len(cases) == 6
    for case, served in zip(cases, server.serving.served_ids):
        expected = model.tokenize_prompt(render_prompt(case.conversation))
        assert served == expected, case.name
        assert served.count(IMAGE_TOKEN_INDEX) == len(case.conversation.images)


def test_in_the_training_form_a_newline_follows_every_image(models):
    model = models["llama_3"]
    for case in check_cases("llama_3", "training"):
        ids = model.tokenize_prompt(render_prompt(case.conversation))
        for position in (index for index, token in enumerate(ids) if token == IMAGE_TOKEN_INDEX):
            assert model.tokenizer.decode(ids[position + 1 : position + 2]).startswith("\n"), case.name


@pytest.mark.parametrize("template", TEMPLATES)
def test_tensorrt_llms_own_newline_after_images_changes_the_tokens_the_patch_removes_it(models, template):
    model = models[template]
    case = check_cases(template)[0]
    server = _served(model, ServingDefects(newline_after_images=True))
    try:
        backend = OpenAIVisionLanguageModel(server.url, template=template)
        backend.generate(case.conversation, GenerationConfig(max_new_tokens=1, min_new_tokens=0))
    finally:
        server.stop()
    expected = model.tokenize_prompt(render_prompt(case.conversation))
    (served,) = server.serving.served_ids
    assert served != expected
    position = served.index(IMAGE_TOKEN_INDEX)
    newline = model.tokenizer("\n").input_ids  # what _postprocess inserts unpatched: BOS and the newline
    assert served[position + 1 : position + 1 + len(newline)] == newline
    assert served[: position + 1] + served[position + 1 + len(newline):] == expected


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_check_agrees_when_the_server_answers_as_trained(models, template):
    server = _served(models[template])
    try:
        candidate = OpenAIVisionLanguageModel(server.url, template=template)
        report = compare_backends(models[template], candidate, check_cases(template), max_new_tokens=6, tolerance=1e-4)
    finally:
        server.stop()
    assert [case.name for case in report.cases] == [
        "ct/turn-1", "ct/turn-2", "cxr/turn-1", "cxr/turn-2", "brain-mr/turn-1", "brain-mr/turn-2"]
    assert all(case.tokens_equal and case.first_logprob_difference <= 1e-4 for case in report.cases), report.to_dict()
    assert all(len(case.reference_tokens) >= 1 for case in report.cases)
    assert report.verdict is Verdict.AGREE


def test_the_check_disagrees_with_a_server_that_adds_a_newline_after_images(models):
    server = _served(models["llama_3"], ServingDefects(newline_after_images=True))
    try:
        candidate = OpenAIVisionLanguageModel(server.url, template="llama_3")
        report = compare_backends(models["llama_3"], candidate, check_cases("llama_3"), max_new_tokens=6, tolerance=1e-4)
    finally:
        server.stop()
    assert report.verdict is Verdict.DISAGREE
    assert all(case.first_logprob_difference > 1e-4 or not case.tokens_equal for case in report.cases)


def test_a_server_that_counts_placeholders_twice_fails_every_image_request(models):
    server = _served(models["llama_3"], ServingDefects(placeholders_added_again=True))
    try:
        candidate = OpenAIVisionLanguageModel(server.url, template="llama_3", retries=0)
        report = compare_backends(models["llama_3"], candidate, check_cases("llama_3")[:1], max_new_tokens=2)
    finally:
        server.stop()
    (case,) = report.cases
    assert "2 image placeholders for 1 images" in case.error
    assert report.verdict is Verdict.DISAGREE


def test_in_process_logprobs_are_the_log_softmax_of_the_chosen_tokens(models):
    import torch

    model = models["llama_3"]
    case = check_cases("llama_3")[0]
    generation = model.generate(case.conversation, GenerationConfig(max_new_tokens=3, min_new_tokens=0, logprobs=4))
    first = torch.log_softmax(model.prompt_logits(case.conversation), dim=-1)
    assert generation.token_logprobs[0] == pytest.approx(float(first.max()), abs=1e-5)
    assert generation.tokens[0] == model.tokenizer.decode([int(first.argmax())])
    assert len(generation.top_logprobs[0]) == 4 and generation.top_logprobs[0][0][1] == pytest.approx(float(first.max()), abs=1e-5)
