"""Stage ``expert``: the route's expert ALWAYS runs, whatever the model will say; its findings go into the SR and SEG.

Its label volume (on the grid it was given) is saved as ``labels.npz`` and its findings (names, volumes in mL, scores,
backend, model version, demo, timings, the weights digest that becomes the Device UID) are the stage's result, a
``contracts.ExpertStageResult``.
"""

from __future__ import annotations

import logging
import time

from service.pipeline.contracts import ExpertStageResult, PreparedInput, Route
from service.pipeline.executor import StageOutcome
from service.pipeline.ledger import StageClaim
from service.pipeline.stages import PermanentStageError, TransientStageError
from service.pipeline.work.resources import StageResources

__all__ = ["ExpertStage", "run_expert"]

LOGGER = logging.getLogger(__name__)
_TRANSIENT = ("OutOfMemoryError", "CudaError", "TimeoutError")  # a busy GPU: worth another try later


def run_expert(resources: StageResources, name: str, argument: str | None, inputs):
    """Run one expert on its ``ExpertInput``, mapping its failures onto the pipeline's error kinds."""
    from engines.experts import ExpertError

    try:
        expert = resources.experts.get(name)
        return expert.run(inputs, argument)
    except (ExpertError, ValueError, FileNotFoundError) as exc:
        raise PermanentStageError(f"{name} failed: {exc}") from exc
    except RuntimeError as exc:
        if type(exc).__name__ in _TRANSIENT or "out of memory" in str(exc).lower():
            raise TransientStageError(f"{name}: {exc}") from exc
        raise


class ExpertStage:
    def __init__(self, resources: StageResources) -> None:
        self.resources = resources

    def __call__(self, claim: StageClaim) -> StageOutcome:
        from engines.model_store.layout import EXPERT_FOLDERS

        route = Route.of(claim)
        name, argument = route.expert.value, route.argument
        inputs = PreparedInput.of(claim).expert_input()
        started, began_at = time.perf_counter(), time.time()
        result = run_expert(self.resources, name, argument, inputs)
        elapsed = time.perf_counter() - started
        digest = self.resources.model_digest(self.resources.settings.models_dir / EXPERT_FOLDERS[name])
        labels_path = self.resources.work_dir(claim.study_uid, claim.run_id) / "labels.npz"
        # the wall-clock window lets a reader tell overlap (beside the model's first turn) from sequence
        record = ExpertStageResult.from_expert_result(result, labels_path, digest, elapsed_s=elapsed,
                                                      model_window=(began_at, began_at + elapsed))
        LOGGER.info("study %s: %s on %s in %.2f s%s", claim.study_uid, name, result.backend, elapsed,
                    " (DEMO weights)" if result.demo else "")
        return StageOutcome(result=record)
