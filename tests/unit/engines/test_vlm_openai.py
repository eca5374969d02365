"""The openai backend against a TEST DOUBLE of trtllm-serve (tests/support/openai_double.py) on loopback."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from engines.vlm.base import Conversation, GenerationConfig, VlmError
from engines.vlm.openai_backend import OpenAIVisionLanguageModel, PromptMode
from engines.vlm.templates import render_prompt, single_turn_wrapping
from tests.support.openai_double import OpenAIServerDouble, ScriptedReply
from tests.support.ports import free_port

RNG = np.random.default_rng(3)
CT = (RNG.random((40, 30, 3)) * 255).astype(np.uint8)
OVERLAY = (RNG.random((20, 20, 3)) * 255).astype(np.uint8)


@pytest.fixture
def server():
    with OpenAIServerDouble() as double:
        yield double


def backend(url: str, **kwargs) -> OpenAIVisionLanguageModel:
    options = {"template": "llama_3", "backoff_s": 0.0, "retries": 2}
    options.update(kwargs)
    return OpenAIVisionLanguageModel(url, **options)


def conversation(template: str = "llama_3") -> Conversation:
    return (
        Conversation(template)
        .add("user", "Cards.\n<image> This is a CT image.\nWhat organs?", (CT,))
        .add("assistant", "Let me trigger <VISTA3D(everything)>.")
        .add("user", "The results are <image>. Describe.", (OVERLAY,))
    )


def decode_image(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))).convert("RGB"))


def parts_of(request: dict) -> list[dict]:
    (message,) = request["messages"]
    return message["content"]


def test_templated_mode_sends_our_prompt_inside_the_servers_single_turn(server):
    generation = backend(server.url).generate(conversation())
    (request,) = server.chat_requests
    text_part, *image_parts = parts_of(request)
    prefix, suffix = single_turn_wrapping("llama_3")
    assert request["messages"][0]["role"] == "user"
    assert prefix + text_part["text"] + suffix == render_prompt(conversation())
    assert text_part["text"].count("<image>") == 2 and len(image_parts) == 2
    assert generation.prompt == render_prompt(conversation())


def test_images_arrive_base64_encoded_in_order_and_lossless(server):
    backend(server.url).generate(conversation())
    _, first, second = parts_of(server.chat_requests[0])
    assert first["type"] == second["type"] == "image_url"
    assert np.array_equal(decode_image(first["image_url"]["url"]), CT)
    assert np.array_equal(decode_image(second["image_url"]["url"]), OVERLAY)


def test_request_carries_generation_settings_and_stop_string(server):
    backend(server.url, template="vicuna_v1").generate(
        conversation("vicuna_v1"), GenerationConfig(max_new_tokens=64, min_new_tokens=2)
    )
    request = server.chat_requests[0]
    assert request["model"] == "Llama3-VILA-M3-8B"  # asked from /v1/models
    assert request["max_tokens"] == 64 and request["min_tokens"] == 2 and request["temperature"] == 0.0
    assert request["stop"] == ["</s>"]


def test_llama_3_requests_stop_on_end_of_text_as_well_as_end_of_turn(server):
    backend(server.url).generate(conversation())
    assert server.chat_requests[0]["stop"] == ["<|eot_id|>", "<|end_of_text|>"]


def test_streamed_answer_is_assembled_with_usage(server):
    server.reply(ScriptedReply(text="This looks like a CT image. Let me trigger <VISTA3D(liver)>."))
    generation = backend(server.url).generate(conversation())
    assert generation.text == "This looks like a CT image. Let me trigger <VISTA3D(liver)>."
    assert generation.stopped_by == "stop_token" and generation.completion_tokens == 10
    assert generation.backend == f"openai:{server.url}"
    assert 0 < generation.time_to_first_token_s <= generation.total_s


def test_non_streamed_answer_and_length_finish(server):
    server.reply(ScriptedReply(text="a b c", finish_reason="length"))
    generation = backend(server.url, stream=False, model="vila").generate(conversation())
    assert generation.text == "a b c" and generation.stopped_by == "max_new_tokens"
    assert server.chat_requests[0]["model"] == "vila"


def test_chat_mode_sends_turns_with_images_where_the_placeholders_were(server):
    backend(server.url, mode=PromptMode.CHAT, model="vila").generate(conversation())
    messages = server.chat_requests[0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    first = messages[0]["content"]
    assert [p["type"] for p in first] == ["text", "image_url", "text"]
    assert first[0]["text"] == "Cards.\n" and first[2]["text"] == " This is a CT image.\nWhat organs?"
    assert messages[1]["content"] == "Let me trigger <VISTA3D(everything)>."


def test_server_errors_are_retried_then_succeed(server):
    server.fail(503, times=2, message="engine warming up")
    generation = backend(server.url, model="vila").generate(conversation())
    assert len(server.chat_requests) == 3 and generation.text


def test_persistent_server_errors_end_in_a_clear_error(server):
    server.fail(500, times=3, message="CUDA out of memory")
    with pytest.raises(VlmError, match=r"failed after 3 attempts, last: HTTP 500: CUDA out of memory.*GET /health"):
        backend(server.url, model="vila").generate(conversation())


def test_rate_limit_honours_retry_after(server):
    waits: list[float] = []
    server.fail(429, times=1, retry_after="0.25")
    backend(server.url, model="vila", sleep=waits.append).generate(conversation())
    assert waits == [0.25]


def test_back_off_grows_exponentially(server):
    waits: list[float] = []
    server.fail(502, times=2)
    backend(server.url, model="vila", backoff_s=0.5, sleep=waits.append).generate(conversation())
    assert waits == [0.5, 1.0]


def test_client_errors_are_not_retried(server):
    server.fail(400, times=1, message="Number of images does not match placeholders")
    with pytest.raises(VlmError, match="refused the request: HTTP 400: Number of images does not match placeholders"):
        backend(server.url, model="vila").generate(conversation())
    assert len(server.chat_requests) == 1


def test_unreachable_server_is_reported_after_retries():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(VlmError, match=r"failed after 3 attempts, last: cannot connect"):
        backend(url, model="vila").generate(conversation())


def test_slow_server_times_out_with_a_clear_error(server):
    release = server.hold_next()
    try:
        with pytest.raises(VlmError, match="did not answer within 0.3 s"):
            backend(server.url, model="vila").generate(conversation(), GenerationConfig(timeout_s=0.3))
    finally:
        release.set()
    assert len(server.chat_requests) == 1  # a read timeout is not retried: the server may still be generating


def test_malformed_answer_is_reported(server):
    server.reply(ScriptedReply(raw_body=b"<html>proxy error</html>"))
    with pytest.raises(VlmError, match="not JSON"):
        backend(server.url, model="vila", stream=False).generate(conversation())


def test_templated_mode_refuses_prompts_the_server_would_strip(server):
    padded = Conversation("llama_3").add("user", "  Describe the image in detail.")
    with pytest.raises(VlmError, match="trtllm-serve strips"):
        backend(server.url, model="vila").generate(padded)
    assert server.chat_requests == []


def test_bad_url_is_refused():
    with pytest.raises(ValueError, match="http"):
        OpenAIVisionLanguageModel("localhost:8000", template="llama_3")
