"""The real stage handlers: plan -> prepare -> expert -> vlm -> report -> deliver.

``build_stage_handlers(settings, session_factory)`` is what a worker process calls once; the expert registry and the
VILA-M3 model load lazily, on the first stage that needs them, and stay loaded for every later study.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.pipeline.delivery import Sender, default_sender
from service.pipeline.executor import StageHandler
from service.pipeline.stages import Stage
from service.pipeline.time_limits import StageTimeLimits
from service.pipeline.work.deliver import DeliverStage
from service.pipeline.work.expert import ExpertStage
from service.pipeline.work.plan import PlanStage
from service.pipeline.work.prepare import PrepareStage
from service.pipeline.work.report import ReportStage
from service.pipeline.work.resources import StageResources
from service.pipeline.work.vlm import VlmStage

__all__ = ["build_stage_handlers", "StageResources"]


def build_stage_handlers(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    sender: Sender | None = None,
    vlm_factory: Callable[[], object] | None = None,
    time_limits: StageTimeLimits | None = None,
) -> dict[Stage, StageHandler]:
    resources = StageResources(settings, session_factory, vlm_factory, time_limits=time_limits)
    return {
        Stage.PLAN: PlanStage(resources),
        Stage.PREPARE: PrepareStage(resources),
        Stage.EXPERT: ExpertStage(resources),
        Stage.VLM: VlmStage(resources),
        Stage.REPORT: ReportStage(resources),
        Stage.DELIVER: DeliverStage(resources, sender or default_sender(settings.dicom_ae_title)),
    }
