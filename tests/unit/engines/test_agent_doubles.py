"""Test doubles for the agent tests (no tests here).

- ``ScriptedModel``: a TEST DOUBLE of a VILA-M3 backend (the real one needs the 8B weights and a GPU): it returns
  predetermined answers in order and records every conversation it was given.
- ``FixedLabelExpert`` / ``FixedScoresExpert``: TEST DOUBLES of the experts (VISTA3D/BraTS need bundle weights and a
  GPU, CXR the TorchXRayVision weights): they return fixed label volumes / scores, or fail, or block, as told.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from engines.experts.base import ExpertError, ExpertInput, ExpertName, ExpertResult
from engines.vlm.base import Conversation, Generation, GenerationConfig, VlmError

IDENTITY = np.eye(4)


@dataclass(frozen=True)
class Scripted:
    """One scripted generation: its text and why it stopped, or an error to raise instead."""

    text: str = ""
    stopped_by: str = "stop_token"
    completion_tokens: int = 12
    error: Exception | None = None


@dataclass(frozen=True)
class SeenMessage:
    role: str
    text: str
    image_shapes: tuple[tuple[int, ...], ...]
    images: tuple[np.ndarray, ...] = ()


class ScriptedModel:
    """TEST DOUBLE of VisionLanguageModel: answers from a script, records what it was asked."""

    def __init__(self, *answers: str | Scripted, backend: str = "scripted-test-double", model: str = "scripted"):
        self._script = [a if isinstance(a, Scripted) else Scripted(a) for a in answers]
        self.backend, self.model = backend, model
        self.during_generation: list = []  # callables run inside the n-th generate() call (index n - 1)
        self.conversations: list[tuple[SeenMessage, ...]] = []
        self.configs: list[GenerationConfig] = []

    def generate(self, conversation: Conversation, config: GenerationConfig = GenerationConfig()) -> Generation:
        self.conversations.append(
            tuple(
                SeenMessage(m.role.value, m.text, tuple(tuple(image.shape) for image in m.images), tuple(m.images))
                for m in conversation.messages
            )
        )
        self.configs.append(config)
        if len(self.conversations) > len(self._script):
            raise AssertionError(f"asked {len(self.conversations)} times; the script has {len(self._script)} answers")
        step = self._script[len(self.conversations) - 1]
        if len(self.during_generation) >= len(self.conversations):
            self.during_generation[len(self.conversations) - 1]()
        if step.error is not None:
            raise step.error
        return Generation(
            text=step.text,
            prompt=f"<prompt of {len(conversation.messages)} messages>",
            prompt_tokens=100,
            completion_tokens=step.completion_tokens,
            stopped_by=step.stopped_by,
            time_to_first_token_s=0.01,
            total_s=0.02,
            backend=self.backend,
            model=self.model,
        )

    def user_texts(self, call: int) -> list[str]:
        return [m.text for m in self.conversations[call] if m.role == "user"]


@dataclass
class FixedLabelExpert:
    """TEST DOUBLE of a segmentation expert (VISTA3D or BraTS): returns a fixed label volume."""

    name: ExpertName
    label_volume: np.ndarray | None
    label_names: dict[int, str] = field(default_factory=dict)
    error: Exception | None = None
    release: threading.Event | None = None  # when set, run() blocks until the test sets it
    timings: dict[str, float] = field(default_factory=lambda: {"inference": 4.0})
    calls: list[str | None] = field(default_factory=list)

    def run(self, inputs: ExpertInput, argument: str | None = None) -> ExpertResult:
        self.calls.append(argument)
        if self.release is not None:
            self.release.wait(30)
        if self.error is not None:
            raise self.error
        return ExpertResult(
            expert=self.name,
            argument=argument,
            backend="test-double",
            model_version="fixed-labels",
            demo=True,
            label_volume=self.label_volume,
            affine=inputs.affine,
            label_names=dict(self.label_names),
            timings=dict(self.timings),
        )


@dataclass
class FixedScoresExpert:
    """TEST DOUBLE of the CXR expert: returns fixed pathology scores."""

    scores: dict[str, float]
    name: ExpertName = ExpertName.CXR
    calls: list[str | None] = field(default_factory=list)

    def run(self, inputs: ExpertInput, argument: str | None = None) -> ExpertResult:
        self.calls.append(argument)
        if np.asarray(inputs.volume).ndim != 2:
            raise ExpertError("the CXR expert takes one 2D radiograph")
        return ExpertResult(
            expert=self.name,
            argument=None,
            backend="test-double",
            model_version="fixed-scores",
            demo=True,
            scores=dict(self.scores),
            timings={"inference": 1.5},
        )


def failing_model_error() -> Scripted:
    return Scripted(error=VlmError("the test-double server answered 503"))


def ct_study(shape: tuple[int, int, int] = (8, 8, 6)) -> tuple[np.ndarray, np.ndarray]:
    """A small CT volume (HU) and its VISTA3D labels: liver (1) in slices 1-4, a hepatic tumour (26) in slice 3, lung
    (20) only in slice 5."""
    volume = np.full(shape, -1000.0, dtype=np.float32)
    volume[2:6, 2:6, :] = 60.0
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:6, 2:6, 1:5] = 1
    labels[3:5, 3:5, 3] = 26
    labels[1:7, 1:7, 5] = 20
    return volume, labels


def brats_study(shape: tuple[int, int, int] = (8, 8, 6)) -> tuple[np.ndarray, np.ndarray]:
    """Four MRI sequences (T1c, T1, T2, FLAIR) and BraTS labels 1/2/4 in slice 3 only."""
    rng = np.random.default_rng(7)
    volume = rng.uniform(0.0, 500.0, size=(4, *shape)).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:7, 1:7, 3] = 2
    labels[2:6, 2:6, 3] = 1
    labels[3:5, 3:5, 3] = 4
    return volume, labels


def cxr_image(shape: tuple[int, int] = (16, 16)) -> np.ndarray:
    return np.arange(shape[0] * shape[1], dtype=np.uint8).reshape(shape)
