"""Typed, versioned stage results: what one stage hands the next (DESIGN.md, "Stage contracts and geometry").

========  =====================  ==========================================================
stage     contract               read by
========  =====================  ==========================================================
plan      ``Route``              every later stage (``Route.of(claim)``: the run's route)
prepare   ``PreparedInput``      expert, vlm, report
expert    ``ExpertStageResult``  vlm (the agent's ready result), report
vlm       ``Consultations``      report
report    ``ReportResult``       deliver
deliver   ``DeliveryResult``     (the run's end)
========  =====================  ==========================================================

Every real stage returns its contract (validated when it is made, and checked to be its stage's by
``stage_result_for_storage`` before the ledger keeps it); each contract's ``of(claim)`` reads it back (migrating
results of older releases, refusing what it cannot read with a ``ContractError`` that fails the run with a reason).
``base`` says how versions work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.pipeline.contracts.base import ContractError, StageContract, describe_validation_error
from service.pipeline.contracts.consultations import Consultations, VlmIdentity
from service.pipeline.contracts.expert import ExpertStageResult
from service.pipeline.contracts.prepared import PreparedInput
from service.pipeline.contracts.report import DeliveryResult, ReportResult, ResultObject
from service.pipeline.contracts.route import Route
from service.pipeline.stages import Stage

__all__ = [
    "CONTRACTS",
    "Consultations",
    "ContractError",
    "DeliveryResult",
    "ExpertStageResult",
    "PreparedInput",
    "ReportResult",
    "ResultObject",
    "Route",
    "StageContract",
    "VlmIdentity",
    "describe_validation_error",
    "stage_result_for_storage",
]

CONTRACTS: dict[Stage, type[StageContract]] = {
    Stage.PLAN: Route,
    Stage.PREPARE: PreparedInput,
    Stage.EXPERT: ExpertStageResult,
    Stage.VLM: Consultations,
    Stage.REPORT: ReportResult,
    Stage.DELIVER: DeliveryResult,
}


def stage_result_for_storage(stage: Stage | str, result: StageContract | Mapping[str, Any]) -> dict[str, Any]:
    """``result`` as JSON for its row. A contract must be ``stage``'s own (``ContractError`` otherwise); it was
    validated when it was made. A plain dict (the executor's own tests, and test doubles of a stage) is kept as
    given: the stage that reads it validates it then."""
    if isinstance(result, StageContract):
        return CONTRACTS[Stage(stage)].written(result)
    return dict(result)
