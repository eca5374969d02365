"""The conversation the agent builds and what a VLM backend returns; both backends (vila, openai) speak this."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Role", "Message", "Conversation", "Generation", "GenerationConfig", "VisionLanguageModel", "VlmError"]

IMAGE_PLACEHOLDER = "<image>"


class VlmError(RuntimeError):
    """The model or its server failed; the message says what to check."""


class Role(str, enum.Enum):
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True)
class Message:
    """One turn. ``text`` holds one ``<image>`` per entry of ``images``, in order."""

    role: Role
    text: str
    images: tuple[np.ndarray, ...] = ()  # (H, W, 3) uint8 RGB

    def __post_init__(self) -> None:
        if self.text.count(IMAGE_PLACEHOLDER) != len(self.images):
            raise ValueError(
                f"message has {self.text.count(IMAGE_PLACEHOLDER)} <image> placeholders but {len(self.images)} images"
            )


@dataclass
class Conversation:
    """Ordered turns; the template (``llama_3``, ``vicuna_v1``, ``hermes-2``) turns it into the exact prompt string."""

    template: str
    messages: list[Message] = field(default_factory=list)

    def add(self, role: Role | str, text: str, images: tuple[np.ndarray, ...] = ()) -> Conversation:
        self.messages.append(Message(Role(role), text, tuple(images)))
        return self

    @property
    def images(self) -> list[np.ndarray]:
        return [image for message in self.messages for image in message.images]


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 1024
    min_new_tokens: int = 2
    temperature: float = 0.0  # greedy, as evaluated
    timeout_s: float = 300.0
    logprobs: int = 0  # > 0: each generated token's log-probability and the top ``logprobs`` alternatives


@dataclass(frozen=True)
class Generation:
    text: str
    prompt: str  # the exact templated prompt that was sent (placeholders, not embeddings)
    prompt_tokens: int
    completion_tokens: int
    stopped_by: str  # "stop_token", "max_new_tokens", "server"
    time_to_first_token_s: float
    total_s: float
    backend: str  # "vila-torch-cpu", "vila-torch-cuda", "openai:<url>"
    model: str
    # With GenerationConfig.logprobs > 0: each generated token as the tokenizer decodes it alone (the stop token
    # included, as the OpenAI API lists it), its log-probability, and the most likely tokens at that step.
    tokens: tuple[str, ...] = ()
    token_logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[tuple[tuple[str, float], ...], ...] = ()


@runtime_checkable
class VisionLanguageModel(Protocol):
    def generate(self, conversation: Conversation, config: GenerationConfig = GenerationConfig()) -> Generation:
        """Continue the conversation with one assistant answer (the conversation itself is not changed)."""
        ...
