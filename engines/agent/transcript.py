"""The structured record of one consultation: every prompt and answer, the expert call, the slice, timings, the outcome.

Plain dataclasses of JSON types (str, int, float, bool, None, lists, str-keyed dicts, str enums), so
``Transcript.from_json(t.to_json()) == t``. Images are recorded by shape and role, never by pixels.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Outcome",
    "OutcomeReason",
    "ExpertSource",
    "ImageRecord",
    "TurnRecord",
    "TriggerRecord",
    "ExpertResultSummary",
    "ExpertCallRecord",
    "SliceRecord",
    "Transcript",
]


class Outcome(str, enum.Enum):
    """How the consultation ended; always set, whatever went wrong."""

    ANSWERED_WITH_EXPERT = "answered_with_expert"  # turn 2 answered with the expert's result
    ANSWERED_WITHOUT_EXPERT = "answered_without_expert"  # the turn-1 answer is final; ``reason`` says why
    SEGMENTED_NO_SECOND_PASS = "segmented_no_second_pass"  # the trigger answer said "segmented": overlay, no turn 2
    ANSWER_TRUNCATED = "answer_truncated"  # a turn hit its token bound; the text so far is kept, never parsed
    MODEL_FAILED = "model_failed"  # the model raised (server down, timeout): no usable final answer


class OutcomeReason(str, enum.Enum):
    NO_TRIGGER = "no_trigger"  # the model answered directly
    UNSERVED_EXPERT = "unserved_expert"  # VISTA2D: listed in the model cards, no expert
    MULTIPLE_TAGS = "multiple_tags"
    UNKNOWN_EXPERT = "unknown_expert"
    AMBIGUOUS_EXPERT = "ambiguous_expert"
    INVALID_ARGUMENT = "invalid_argument"
    EXPERT_NOT_CONFIGURED = "expert_not_configured"  # no expert of that name was given to the agent, nor a ready result
    EXPERT_FAILED = "expert_failed"  # ExpertError / ValueError from the expert
    EXPERT_CRASHED = "expert_crashed"  # any other exception from the expert (logged with its traceback)
    EXPERT_TIMED_OUT = "expert_timed_out"
    EXPERT_RESULT_UNUSABLE = "expert_result_unusable"  # no label volume / no scores / overlay could not be drawn
    TURN_LIMIT = "turn_limit"  # max_turns allowed no second generation
    TOKEN_LIMIT = "token_limit"  # the total token budget left too little for a second generation
    TURN_1_TRUNCATED = "turn_1_truncated"
    TURN_2_TRUNCATED = "turn_2_truncated"
    TURN_1_MODEL_ERROR = "turn_1_model_error"
    TURN_2_MODEL_ERROR = "turn_2_model_error"


class ExpertSource(str, enum.Enum):
    PROVIDED = "provided"  # a ready-made result from the caller matched the trigger: the expert did not run here
    RAN = "ran"  # the agent ran the expert on the request path


@dataclass
class ImageRecord:
    role: str  # "slice", "T1c", "T1", "T2", "FLAIR", "overlay"
    shape: list[int]
    slice_index: int | None = None


@dataclass
class TurnRecord:
    number: int  # 1, 2
    user_text: str  # the user message text as sent (placeholders, not pixels)
    images: list[ImageRecord]
    templated_prompt: str | None  # the whole conversation rendered by our template (None when no renderer was given)
    backend_prompt: str  # Generation.prompt: what the backend says it sent
    answer: str
    stopped_by: str  # Generation.stopped_by, or "error" when the model raised (then answer is "")
    prompt_tokens: int
    completion_tokens: int
    max_new_tokens: int
    time_to_first_token_s: float
    generation_s: float


@dataclass
class TriggerRecord:
    kind: str  # TriggerKind value, or "unparsed" (the answer was not parsed: truncated or model failure)
    tag: str = ""
    expert: str | None = None
    argument: str | None = None
    raw_argument: str | None = None
    says_segmented: bool = False
    problem: str | None = None  # TriggerProblem value when the trigger could not be acted on
    detail: str = ""


@dataclass
class ExpertResultSummary:
    expert: str
    argument: str | None
    backend: str
    model_version: str
    demo: bool
    label_names: dict[str, str] = field(default_factory=dict)  # label id (as text) -> name
    volumes_ml: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    fallback_reason: str = ""


@dataclass
class ExpertCallRecord:
    expert: str
    argument: str | None
    source: ExpertSource | None  # None when no result was obtained
    run_s: float | None = None  # time the expert ran on the request path (None when a provided result was used)
    waited_s: float | None = None  # time the request path waited for a provided result (0 when it was finished)
    # expert time NOT spent on the request path thanks to a provided result: its own timings (preprocess + inference +
    # postprocess) minus waited_s; None when the result reported no timings
    saved_s: float | None = None
    timeout_s: float | None = None
    result: ExpertResultSummary | None = None
    overlay_legend: list[list[str]] | None = None  # [[color, name], ...] for segmentation experts
    error: str = ""
    overlay_slice: int | None = None  # the axial slice the overlay was drawn on (the one the model saw, unless noted)
    overlay_note: str = ""  # why the overlay is on another slice, or that the expert found nothing

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExpertCallRecord:
        data = dict(data)
        data["source"] = ExpertSource(data["source"]) if data["source"] is not None else None
        data["result"] = ExpertResultSummary(**data["result"]) if data["result"] is not None else None
        return cls(**data)


@dataclass
class SliceRecord:
    policy: str  # SlicePolicy value
    index: int  # axial index (last axis of the volume) the model saw in every turn
    count: int  # number of axial slices
    reason: str  # how it was chosen, in words


@dataclass
class Transcript:
    question: str
    modality: str
    brats_sequences: bool
    template: str
    backend: str
    model: str
    outcome: Outcome
    reason: OutcomeReason | None = None
    detail: str = ""  # what happened, in words an operator can act on
    final_answer: str = ""
    turns: list[TurnRecord] = field(default_factory=list)
    trigger: TriggerRecord | None = None
    expert_call: ExpertCallRecord | None = None
    slice: SliceRecord | None = None
    timings: dict[str, float] = field(default_factory=dict)  # s: prompt_build, turn_1, expert, feedback, turn_2, total
    settings: dict[str, Any] = field(default_factory=dict)  # the AgentSettings in force

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transcript:
        data = dict(data)
        data["outcome"] = Outcome(data["outcome"])
        data["reason"] = OutcomeReason(data["reason"]) if data["reason"] is not None else None
        data["turns"] = [
            TurnRecord(**{**turn, "images": [ImageRecord(**image) for image in turn["images"]]})
            for turn in data["turns"]
        ]
        data["trigger"] = TriggerRecord(**data["trigger"]) if data["trigger"] is not None else None
        call = data["expert_call"]
        data["expert_call"] = ExpertCallRecord.from_dict(call) if call is not None else None
        data["slice"] = SliceRecord(**data["slice"]) if data["slice"] is not None else None
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Transcript:
        return cls.from_dict(json.loads(text))


def _plain(value: Any) -> Any:
    """Enums to their values, tuples to lists: exactly what JSON gives back."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
