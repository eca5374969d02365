"""A real pipeline worker process whose expert stage hangs, with TEST-DOUBLE stage handlers (time limits under solo).

Each handler writes a marker ``<markers>/<run>-<stage>-<attempt>`` holding the error the ledger showed for its stage
when it started. The expert stage:

- attempt 1 hangs where signals cannot reach it (SIGALRM blocked, like C code that never returns to Python): only
  the hard limit's watchdog can end it, by ending this process;
- attempt 2 hangs in a plain ``sleep``: the soft limit interrupts it (``<run>-expert-2-interrupted`` says so);
- attempt 3 returns.

Run: ``python -m tests.support.hanging_stage_worker MARKERS_DIR`` with M3EDGE_* settings (STAGE_TIME_LIMITS for the
expert) in the environment.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from service.pipeline.executor import StageOutcome
from service.pipeline.ledger import PipelineLedger
from service.pipeline.stages import Stage
from service.pipeline.time_limits import StageTimedOut
from tests.support.pipeline_worker import run_test_worker

HANG_S = 120.0


def hanging_expert_handlers(markers: Path, ledger: PipelineLedger):
    def make(stage: Stage):
        def handle(claim):
            _, _, error = ledger.stage_state(claim.run_id, stage)
            (markers / f"{claim.run_id}-{stage.value}-{claim.attempt}").write_text(error)
            if stage is Stage.EXPERT and claim.attempt == 1:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
                time.sleep(HANG_S)
            elif stage is Stage.EXPERT and claim.attempt == 2:
                try:
                    time.sleep(HANG_S)
                except StageTimedOut:
                    (markers / f"{claim.run_id}-expert-2-interrupted").write_text("soft limit")
                    raise
            return StageOutcome({"stage": stage.value, "attempt": claim.attempt})
        return handle
    return {stage: make(stage) for stage in Stage}


def main() -> None:
    markers = Path(sys.argv[1])
    run_test_worker(lambda ledger: hanging_expert_handlers(markers, ledger))


if __name__ == "__main__":
    main()
