"""The stages a study goes through, their order, queues and time limits."""

from __future__ import annotations

import enum

__all__ = ["Stage", "STAGE_ORDER", "queue_for", "next_stage", "dispatch_group", "TIME_LIMITS", "TransientStageError", "PermanentStageError",
           "StudySkipped"]


class Stage(str, enum.Enum):
    PLAN = "plan"  # routing rules -> expert, argument, questions, destinations, priority
    PREPARE = "prepare"  # series -> volumes (+ affines) and the images the VLM sees
    EXPERT = "expert"  # the route's expert model
    VLM = "vlm"  # VILA-M3: turn 1 -> trigger -> expert result -> turn 2
    REPORT = "report"  # SR (+ SEG, SC) written
    DELIVER = "deliver"  # C-STORE to every destination


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)

_QUEUES = {
    Stage.PLAN: "cpu",
    Stage.PREPARE: "cpu",
    Stage.EXPERT: "gpu",
    Stage.VLM: "gpu",
    Stage.REPORT: "cpu",
    Stage.DELIVER: "io",
}

# Default hard limits in seconds (the soft limit is 30 s earlier); STAGE_TIME_LIMITS changes them, and
# service.pipeline.time_limits enforces them. The sweeper re-queues a stage RUNNING longer than its hard limit.
TIME_LIMITS = {
    Stage.PLAN: 120,
    Stage.PREPARE: 600,
    Stage.EXPERT: 1800,
    Stage.VLM: 1800,
    Stage.REPORT: 600,
    Stage.DELIVER: 900,
}


def queue_for(stage: Stage | str, priority: str = "routine") -> str:
    """``cpu``/``gpu``/``io``; urgent work goes to ``<queue>.urgent``, which workers read first."""
    queue = _QUEUES[Stage(stage)]
    return f"{queue}.urgent" if priority == "urgent" else queue


def dispatch_group(stage: Stage | str) -> tuple[Stage, ...]:
    """The messages to send when ``stage`` is next. The expert goes out with the VLM stage, VLM first: the VLM
    handler claims the expert itself and runs it beside the model's first turn (see work/vlm.py); whichever worker
    takes the expert's own message first runs it instead, and the other message finds it claimed."""
    stage = Stage(stage)
    return (Stage.VLM, Stage.EXPERT) if stage is Stage.EXPERT else (stage,)


def next_stage(stage: Stage | str) -> Stage | None:
    index = STAGE_ORDER.index(Stage(stage))
    return STAGE_ORDER[index + 1] if index + 1 < len(STAGE_ORDER) else None


class TransientStageError(RuntimeError):
    """Worth retrying (a destination down, a busy GPU, a lost connection): retried with back-off."""


class PermanentStageError(RuntimeError):
    """Retrying cannot help (an invalid series, a model that is not installed): the study ends ``failed``."""


class StudySkipped(Exception):
    """The study is not for us (no routing rule matched): it ends ``skipped`` with this reason."""
