"""Stage ``expert``: the route's expert ALWAYS runs, whatever the model will say; its findings go into the SR and SEG.

Its label volume is saved as ``labels.npz`` and its findings (names, volumes in mL, scores, backend, model version,
demo, timings, the weights digest that becomes the Device UID) are the stage's result.
"""

from __future__ import annotations

import logging
import time

from service.pipeline.executor import StageOutcome
from service.pipeline.ledger import StageClaim
from service.pipeline.stages import PermanentStageError, TransientStageError
from service.pipeline.work.expert_record import expert_result_record
from service.pipeline.work.resources import StageResources, load_arrays

__all__ = ["ExpertStage", "run_expert"]

LOGGER = logging.getLogger(__name__)
_TRANSIENT = ("OutOfMemoryError", "CudaError", "TimeoutError")  # a busy GPU: worth another try later


def _affine(arrays: dict):
    return arrays.get("affine")


def run_expert(resources: StageResources, name: str, argument: str | None, arrays: dict):
    """Run one expert on prepared arrays, mapping its failures onto the pipeline's error kinds."""
    from engines.experts import ExpertError, ExpertInput

    try:
        expert = resources.experts.get(name)
        return expert.run(ExpertInput(arrays["volume"], _affine(arrays)), argument)
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

        name, argument = claim.route["expert"], claim.route.get("argument")
        arrays = load_arrays(claim.results["prepare"]["input"])
        started, began_at = time.perf_counter(), time.time()
        result = run_expert(self.resources, name, argument, arrays)
        elapsed = time.perf_counter() - started
        digest = self.resources.model_digest(self.resources.settings.models_dir / EXPERT_FOLDERS[name])
        labels_path = self.resources.work_dir(claim.study_uid, claim.run_id) / "labels.npz"
        record = expert_result_record(result, labels_path, digest)
        record["elapsed_s"] = round(elapsed, 4)
        record["model_window"] = [began_at, began_at + elapsed]  # wall clock: lets a reader tell overlap from sequence
        LOGGER.info("study %s: %s on %s in %.2f s%s", claim.study_uid, name, result.backend, elapsed,
                    " (DEMO weights)" if result.demo else "")
        return StageOutcome(result=record)
