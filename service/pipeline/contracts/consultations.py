"""Stage ``vlm``'s result: ``Consultations``, VILA-M3's answers to the route's questions and what it was shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator

from service.pipeline.contracts.base import ContractError, Record, StageContract
from service.pipeline.stages import Stage

__all__ = ["Consultations", "VlmIdentity"]


class VlmIdentity(Record):
    """The model that answered, as the SR names it (AI device observer context)."""

    name: str
    version: str
    backend: str
    weights_digest: str
    demo: bool


class Consultations(StageContract):
    """One consultation per question: ``questions``, ``answers`` and ``outcomes`` (how each ended) in step, the full
    transcripts in the JSON file ``transcripts``. ``overlay_png``: the overlay image (shown to the model, or drawn on
    the slice it saw: ``overlay_source`` says which), ``overlay_slice`` its axial index on the RAS-oriented input
    grid. Timings: ``model_s`` (the model itself), ``stage_wall_s``, ``consultations_wall_s``, ``model_window``."""

    STAGE: ClassVar[Stage] = Stage.VLM

    transcripts: str
    questions: list[str] = Field(min_length=1)
    answers: list[str]
    outcomes: list[str]
    overlay_png: str | None = None
    overlay_source: str = ""
    overlay_slice: int | None = Field(None, ge=0)
    model: VlmIdentity
    model_s: float = Field(ge=0)
    expert_beside_turn1: bool = False
    stage_wall_s: float | None = None
    consultations_wall_s: float | None = None
    model_window: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_answer_per_question(self) -> Consultations:
        if not len(self.questions) == len(self.answers) == len(self.outcomes):
            raise ValueError(f"{len(self.questions)} questions, {len(self.answers)} answers and {len(self.outcomes)} "
                             "outcomes: one answer and one outcome per question")
        return self

    def transcript_records(self) -> list[dict]:
        """The transcripts (``engines.agent.Transcript.to_dict`` each), read from their file."""
        try:
            records = json.loads(Path(self.transcripts).read_text())
        except FileNotFoundError:
            raise ContractError(f"{self.transcripts} is gone (was HOME/work cleaned?); reprocess the study from "
                                "vlm") from None
        if not isinstance(records, list) or not records:
            raise ContractError(f"{self.transcripts} holds no transcript; reprocess the study from vlm")
        return records
