"""What one consultation is asked (:class:`ConsultationRequest`), under which bounds (:class:`AgentSettings`), and
what it gives back (:class:`Consultation`)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engines.agent.expert_call import PendingExpertResult, ReadyResult
from engines.agent.prompts import Modality, PlaceholderForm
from engines.agent.rendering import BratsImages, ImageForm
from engines.agent.transcript import Transcript
from engines.experts.base import ExpertInput, ExpertResult

__all__ = ["SlicePolicy", "AgentSettings", "ConsultationRequest", "Consultation"]


class SlicePolicy(str, enum.Enum):
    """Which axial slice of a CT/MRI volume the model sees (the same slice in every turn)."""

    MIDDLE = "middle"  # the reference's default
    MOST_STRUCTURE = "most_structure"  # where a ready-made expert result found most of the structures asked about


@dataclass(frozen=True)
class AgentSettings:
    """Bounds and choices of the agent; each is a constructor argument with the protocol's value as default."""

    slice_policy: SlicePolicy = SlicePolicy.MIDDLE
    max_turns: int = 2  # generations per consultation: 1 = never a second pass
    max_new_tokens: int = 1024  # per generation, as evaluated
    min_new_tokens: int = 2  # as evaluated
    max_total_new_tokens: int = 2048  # over all generations of one consultation
    expert_timeout_s: float = 900.0  # VISTA3D on a large CT takes minutes on a small GPU
    generation_timeout_s: float = 300.0  # handed to the backend with each generation
    placeholder_form: PlaceholderForm = PlaceholderForm.TRAINING  # user turns with <image> as trained, or raw
    brats_images: BratsImages = BratsImages.AS_TRAINED  # the BraTS first turn's images: T1c x 4 as trained, or 4 sequences

    def __post_init__(self) -> None:
        object.__setattr__(self, "slice_policy", SlicePolicy(self.slice_policy))
        object.__setattr__(self, "placeholder_form", PlaceholderForm(self.placeholder_form))
        object.__setattr__(self, "brats_images", BratsImages(self.brats_images))
        self._check_turns()
        self._check_tokens()
        self._check_timeouts()

    def _check_turns(self) -> None:
        if self.max_turns not in (1, 2):
            raise ValueError(f"max_turns must be 1 or 2 (the protocol has two generations), got {self.max_turns}")

    def _check_tokens(self) -> None:
        if self.min_new_tokens < 0 or self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1 and min_new_tokens >= 0")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} exceeds max_new_tokens {self.max_new_tokens}")
        if self.max_total_new_tokens < self.max_new_tokens:
            raise ValueError(
                f"max_total_new_tokens {self.max_total_new_tokens} must be at least "
                f"max_new_tokens {self.max_new_tokens}"
            )

    def _check_timeouts(self) -> None:
        if not self.expert_timeout_s > 0 or not self.generation_timeout_s > 0:
            raise ValueError("expert_timeout_s and generation_timeout_s must be positive numbers of seconds")

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["slice_policy"] = self.slice_policy.value
        record["placeholder_form"] = self.placeholder_form.value
        record["brats_images"] = self.brats_images.value
        return record


@dataclass(frozen=True)
class ConsultationRequest:
    """One question about one study.

    ``modality`` comes from DICOM (Modality, BodyPartExamined, the series set), never from file names.
    ``expert_input`` holds what the experts take and what the model is shown: CT (X, Y, Z) HU, MRI (X, Y, Z), BraTS
    (4, X, Y, Z) T1c/T1/T2/FLAIR (set ``brats_sequences``), each with its affine; CXR (H, W) uint8 without affine.
    ``ready_results`` are expert results the service already has, or a :class:`PendingExpertResult` for one still
    running (the route's expert started beside turn 1).
    """

    question: str
    modality: Modality
    expert_input: ExpertInput
    brats_sequences: bool = False
    ready_results: tuple[ReadyResult, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "modality", Modality(self.modality))
        object.__setattr__(self, "ready_results", tuple(self.ready_results))
        for ready in self.ready_results:
            if not isinstance(ready, (ExpertResult, PendingExpertResult)):
                raise TypeError(
                    f"ready_results holds a {type(ready).__name__}: give ExpertResult or PendingExpertResult objects"
                )
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError("question must be a non-empty string, e.g. 'Describe the image in detail.'")
        self._check_volume()

    def _check_volume(self) -> None:
        volume = np.asarray(self.expert_input.volume)
        if self.brats_sequences:
            if self.modality is not Modality.MRI or volume.ndim != 4 or volume.shape[0] != 4:
                raise ValueError(
                    f"brats_sequences needs modality MRI and a (4, X, Y, Z) volume (T1c, T1, T2, FLAIR), "
                    f"got {self.modality.value} {volume.shape}"
                )
        elif self.modality is Modality.CXR:
            if volume.ndim != 2 or volume.dtype != np.uint8:
                raise ValueError(f"a CXR request needs an (H, W) uint8 image, got {volume.dtype} {volume.shape}")
        elif volume.ndim != 3:
            raise ValueError(f"a {self.modality.value} request needs an (X, Y, Z) volume, got shape {volume.shape}")
        if self.modality is not Modality.CXR and self.expert_input.affine is None:
            raise ValueError(f"a {self.modality.value} volume needs its affine (voxel index -> RAS mm)")

    @property
    def form(self) -> ImageForm:
        return ImageForm.BRATS if self.brats_sequences else ImageForm(self.modality.value)


@dataclass(frozen=True)
class Consultation:
    """The transcript, plus what the report and SEG writers need that JSON should not carry."""

    transcript: Transcript
    expert_result: ExpertResult | None = None  # the result the model was shown (provided or run here)
    overlay: np.ndarray | None = None  # the overlay image shown in turn 2 (or instead of it, for "segmented")
