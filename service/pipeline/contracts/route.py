"""Stage ``plan``'s result: the ``Route`` the routing rules chose (also kept on the run as ``PipelineRun.route``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from engines.agent.prompts import Modality
from engines.experts.base import ExpertName
from service.pipeline.contracts.base import StageContract
from service.pipeline.stages import Stage
from service.routing.rules import Priority

__all__ = ["Route"]


class Route(StageContract):
    """Which expert, with which argument, answers which questions, for which destinations, how urgently.

    ``matched_series``: required-series name (``T1c``, ...) -> Series Instance UID; ``eligible_series``: the series
    that passed the rule's series tests and anatomy (``prepare`` reads only those); None for a run planned before
    routes named them (every series is read). ``modality`` and ``brats_sequences`` are what the agent's first turn
    says and shows."""

    STAGE: ClassVar[Stage] = Stage.PLAN

    rule: str
    expert: ExpertName
    argument: str | None = None
    questions: list[str] = Field(default_factory=list)
    destinations: list[str] = Field(default_factory=list)
    priority: Priority = Priority.ROUTINE
    matched_series: dict[str, str] = Field(default_factory=dict)
    eligible_series: list[str] | None = None
    modality: Modality
    brats_sequences: bool = False

    @classmethod
    def of(cls, claim) -> Route:
        """The run's route (``claim.route``), as every stage after ``plan`` reads it."""
        return cls.read(claim.route)
