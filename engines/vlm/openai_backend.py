"""The ``openai`` backend: VILA-M3 behind an OpenAI-compatible server, which is how TensorRT-LLM serves it (``trtllm-serve``).

Two prompt modes:

- ``templated`` (default, exact): we render the prompt ourselves (``engines.vlm.templates``) and send ONE user message whose
  text is that prompt without the single-turn wrapping the server adds, followed by the images as base64 ``image_url``
  parts. trtllm-serve's ``/v1/completions`` takes no images, and for VILA (``llava_llama``) its chat endpoint concatenates
  the message texts and its VILA input processor renders the result as one user turn in the VILA template it picked from
  the checkpoint path. Sending ``prompt[len(prefix):-len(suffix)]`` (``templates.single_turn_wrapping``) therefore makes the
  server's final prompt our prompt byte for byte, multi-turn history and ``<image>`` positions included. The server must
  apply the same template (see the README on directory naming) and count the ``<image>`` placeholders already in the
  text (TensorRT-LLM from PR #12827 on, or patched by deploy/trtllm/patch_vila_355fda9.py; an older unpatched one
  answers with an image/placeholder count error). For the Llama-2 based checkpoints (``vicuna_v1``: SentencePiece,
  ``legacy=False``) one space goes after each ``<image>``: the server tokenises the whole prompt at once, where text
  after a special token gets no leading space token, while VILA tokenised each chunk after an image on its own, which
  gave it one; with the space the server's ids are VILA's (SentencePiece reads a space as ``\u2581``).
- ``chat``: plain OpenAI chat messages (text and ``image_url`` parts in order); the server applies its own template.
  For servers other than trtllm-serve; the protocol is then only as exact as the server's template.

Connection errors, 429 and 5xx are retried with exponential back-off; every failure ends in a ``VlmError`` that says what
to check.
"""

from __future__ import annotations

import base64
import enum
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.vlm.base import IMAGE_PLACEHOLDER, Conversation, Generation, GenerationConfig, Role, VlmError
from engines.vlm.templates import get_template, render_prompt, single_turn_wrapping, stop_strings

__all__ = ["OpenAIVisionLanguageModel", "PromptMode", "encode_image_data_url"]

logger = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class PromptMode(str, enum.Enum):
    TEMPLATED = "templated"
    CHAT = "chat"


def encode_image_data_url(image: np.ndarray) -> str:
    """(H, W, 3) uint8 RGB -> ``data:image/png;base64,...`` (lossless, so the server sees our pixels)."""
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"images must be uint8 (H, W, 3) or (H, W), got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAIVisionLanguageModel:
    """``VisionLanguageModel`` that asks an OpenAI-compatible server (trtllm-serve) at ``base_url``."""

    def __init__(
        self,
        base_url: str,
        *,
        template: str,
        model: str | None = None,
        mode: PromptMode | str = PromptMode.TEMPLATED,
        api_key: str | None = None,
        connect_timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        stream: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000, got {base_url!r}")
        if retries < 0 or backoff_s < 0 or connect_timeout_s <= 0:
            raise ValueError("retries and backoff_s must be >= 0 and connect_timeout_s > 0")
        self.template = get_template(template).name
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.mode = PromptMode(mode)
        self.model = model
        self.connect_timeout_s = connect_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stream = stream
        self._sleep = sleep
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @property
    def backend_name(self) -> str:
        return f"openai:{self.base_url}"

    # -- request building ----------------------------------------------------------------------------------------

    def build_messages(self, conversation: Conversation) -> tuple[list[dict[str, Any]], str]:
        """(OpenAI messages, the prompt the model will see) for this conversation in this backend's mode."""
        if conversation.template != self.template.value:
            raise VlmError(f"the conversation uses template {conversation.template!r}, the server is set up for {self.template.value!r}")
        prompt = render_prompt(conversation)
        images = [{"type": "image_url", "image_url": {"url": encode_image_data_url(image)}} for image in conversation.images]
        if self.mode is PromptMode.TEMPLATED:
            prefix, suffix = single_turn_wrapping(self.template)
            if not (prompt.startswith(prefix) and prompt.endswith(suffix)):
                raise VlmError("internal error: the rendered prompt does not carry the template's single-turn wrapping")
            inner = prompt[len(prefix) : len(prompt) - len(suffix)]
            if inner != inner.strip():
                raise VlmError(
                    "the first or last turn starts or ends with whitespace, which trtllm-serve strips before templating: "
                    "strip the conversation's text (or use mode='chat') so the prompt can stay exact"
                )
            if get_template(self.template).sentencepiece:
                inner = inner.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER + " ")
            return [{"role": "user", "content": [{"type": "text", "text": inner}, *images]}], prompt
        messages: list[dict[str, Any]] = []
        image_parts = iter(images)
        for message in conversation.messages:
            if message.role is Role.ASSISTANT:
                messages.append({"role": "assistant", "content": message.text})
                continue
            parts: list[dict[str, Any]] = []
            for index, text in enumerate(message.text.split(IMAGE_PLACEHOLDER)):
                if index:
                    parts.append(next(image_parts))
                if text:
                    parts.append({"type": "text", "text": text})
            messages.append({"role": "user", "content": parts})
        return messages, prompt

    def _body(self, messages: list[dict[str, Any]], config: GenerationConfig) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model or self._served_model(config),
            "messages": messages,
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "stop": list(stop_strings(self.template)),
            "min_tokens": config.min_new_tokens,  # trtllm-serve / vLLM extension
            "stream": self.stream,
        }
        if config.logprobs:
            body["logprobs"], body["top_logprobs"] = True, config.logprobs
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    # -- generation ----------------------------------------------------------------------------------------------

    def generate(self, conversation: Conversation, config: GenerationConfig = GenerationConfig()) -> Generation:
        messages, prompt = self.build_messages(conversation)
        body = self._body(messages, config)
        started = time.perf_counter()
        chat = self._stream_chat if self.stream else self._plain_chat
        answer: _Answer = self._with_retries(lambda client: chat(client, body), config)
        finished = time.perf_counter()
        text = answer.text
        for stop in stop_strings(self.template):
            if text.endswith(stop):
                text = text[: -len(stop)]
        stopped_by = {"stop": "stop_token", "length": "max_new_tokens"}.get(answer.finish or "", "server")
        return Generation(
            text=text.strip(),
            prompt=prompt,
            prompt_tokens=int(answer.usage.get("prompt_tokens", 0)),
            completion_tokens=int(answer.usage.get("completion_tokens", 0)),
            stopped_by=stopped_by,
            time_to_first_token_s=(answer.first_at or finished) - started,
            total_s=finished - started,
            backend=self.backend_name,
            model=body["model"],
            **_logprob_fields(answer.logprobs),
        )

    def _served_model(self, config: GenerationConfig) -> str:
        def ask(client: Any) -> str:
            response = client.get(f"{self.base_url}/v1/models", headers=self._headers)
            self._raise_for_status(response)
            data = _json(response).get("data") or []
            if not data or "id" not in data[0]:
                raise VlmError(f"{self.base_url}/v1/models lists no model: is trtllm-serve serving the VILA-M3 checkpoint?")
            return str(data[0]["id"])

        self.model = self._with_retries(ask, config)
        return self.model

    def _plain_chat(self, client: Any, body: dict[str, Any]) -> _Answer:
        response = client.post(f"{self.base_url}/v1/chat/completions", json=body, headers=self._headers)
        self._raise_for_status(response)
        payload = _json(response)
        try:
            choice = payload["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as error:
            raise VlmError(f"{self.base_url} answered without choices[0].message.content: {str(payload)[:200]}") from error
        logprobs = list((choice.get("logprobs") or {}).get("content") or [])
        return _Answer(text, choice.get("finish_reason"), payload.get("usage") or {}, None, logprobs)

    def _stream_chat(self, client: Any, body: dict[str, Any]) -> _Answer:
        answer = _Answer("", None, {}, None, [])
        pieces: list[str] = []
        with client.stream("POST", f"{self.base_url}/v1/chat/completions", json=body, headers=self._headers) as response:
            if response.status_code >= 400:
                response.read()
                self._raise_for_status(response)
            for event in _server_sent_events(response.iter_lines()):
                if "error" in event:
                    raise VlmError(f"{self.base_url} failed mid-answer: {event['error']}")
                answer.usage = event.get("usage") or answer.usage
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if answer.first_at is None:
                            answer.first_at = time.perf_counter()
                        pieces.append(content)
                    answer.logprobs.extend((choice.get("logprobs") or {}).get("content") or [])
                    answer.finish = choice.get("finish_reason") or answer.finish
        answer.text = "".join(pieces)
        return answer

    # -- transport -----------------------------------------------------------------------------------------------

    def _with_retries(self, call: Callable[[Any], Any], config: GenerationConfig) -> Any:
        import httpx

        timeout = httpx.Timeout(config.timeout_s, connect=self.connect_timeout_s)
        attempts = self.retries + 1
        last = ""
        with httpx.Client(timeout=timeout) as client:
            for attempt in range(attempts):
                try:
                    return call(client)
                except _RetryableStatus as error:
                    last = f"HTTP {error.status}: {error.detail}"
                    wait = error.retry_after if error.retry_after is not None else self._backoff(attempt)
                except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as error:
                    last = f"cannot connect ({type(error).__name__}: {error})"
                    wait = self._backoff(attempt)
                except httpx.TimeoutException as error:
                    raise VlmError(
                        f"{self.base_url} did not answer within {config.timeout_s:g} s ({type(error).__name__}); "
                        "raise the generation timeout or check the server's load"
                    ) from error
                except httpx.HTTPError as error:
                    raise VlmError(f"request to {self.base_url} failed: {type(error).__name__}: {error}") from error
                if attempt + 1 < attempts:
                    logger.warning("VLM server %s: %s; retry %d of %d in %.2f s", self.base_url, last, attempt + 1, self.retries, wait)
                    self._sleep(min(wait, self.max_backoff_s))
        raise VlmError(
            f"VLM server {self.base_url} failed after {attempts} attempts, last: {last}; "
            "check that trtllm-serve is running and healthy (GET /health) and that M3EDGE_VLM_URL points at it"
        )

    def _backoff(self, attempt: int) -> float:
        return self.backoff_s * (2**attempt)

    def _raise_for_status(self, response: Any) -> None:
        if response.status_code < 400:
            return
        detail = _error_detail(response)
        if response.status_code in _RETRY_STATUSES:
            raise _RetryableStatus(response.status_code, detail, _retry_after(response))
        raise VlmError(f"VLM server {self.base_url} refused the request: HTTP {response.status_code}: {detail}")


@dataclass
class _Answer:
    text: str
    finish: str | None
    usage: dict
    first_at: float | None
    logprobs: list[dict[str, Any]]  # OpenAI ``choices[0].logprobs.content``: token, logprob, top_logprobs


def _logprob_fields(content: list[dict[str, Any]]) -> dict[str, tuple]:
    """Generation's token fields from OpenAI ``logprobs.content`` entries (empty when the server sent none)."""
    try:
        return {
            "tokens": tuple(str(entry["token"]) for entry in content),
            "token_logprobs": tuple(float(entry["logprob"]) for entry in content),
            "top_logprobs": tuple(
                tuple((str(top["token"]), float(top["logprob"])) for top in entry.get("top_logprobs") or [])
                for entry in content
            ),
        }
    except (KeyError, TypeError, ValueError) as error:
        raise VlmError(f"the VLM server sent logprobs without token/logprob: {str(content)[:200]}") from error


class _RetryableStatus(Exception):
    def __init__(self, status: int, detail: str, retry_after: float | None) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


def _json(response: Any) -> dict[str, Any]:
    try:
        payload = response.json()
    except (json.JSONDecodeError, ValueError) as error:
        raise VlmError(f"the VLM server answered something that is not JSON: {response.text[:200]!r}") from error
    if not isinstance(payload, dict):
        raise VlmError(f"the VLM server answered JSON that is not an object: {str(payload)[:200]}")
    return payload


def _error_detail(response: Any) -> str:
    try:
        payload = response.json()
    except (json.JSONDecodeError, ValueError):
        return response.text[:300] or response.reason_phrase
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:300]
        return str(error)[:300]
    return str(payload)[:300]


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _server_sent_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError as error:
            raise VlmError(f"the VLM server streamed an event that is not JSON: {data[:200]!r}") from error
        if isinstance(event, dict):
            yield event
