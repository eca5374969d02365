"""A real pipeline worker process (Celery, the configured broker and database) running TEST-DOUBLE stage handlers.

Each handler writes a marker file ``<markers>/<run>-<stage>-<attempt>``; the expert handler waits for
``<markers>/release`` so that a test can kill the process while that stage is running.
Run: ``python -m tests.support.pipeline_worker MARKERS_DIR`` with M3EDGE_* settings in the environment.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from service.config import Settings
from service.db.session import create_db_engine, make_session_factory
from service.logs import configure_logging
from service.pipeline.executor import StageOutcome
from service.pipeline.ledger import PipelineLedger
from service.pipeline.stages import Stage
from service.composition import build_worker


def recording_handlers(markers: Path):
    def make(stage: Stage):
        def handle(claim):
            (markers / f"{claim.run_id}-{stage.value}-{claim.attempt}").write_text(claim.study_uid)
            if stage is Stage.EXPERT:
                deadline = time.monotonic() + 120
                while not (markers / "release").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            return StageOutcome({"stage": stage.value})
        return handle
    return {stage: make(stage) for stage in Stage}


def run_test_worker(handlers_for: Callable[[PipelineLedger], dict]) -> None:
    """Run a worker on every queue with the handlers ``handlers_for(ledger)`` gives (settings from the environment)."""
    settings = Settings.load()
    configure_logging("INFO")
    factory = make_session_factory(create_db_engine(settings.effective_database_url))
    ledger = PipelineLedger(factory)
    worker = build_worker(settings, factory, ["cpu.urgent", "gpu.urgent", "io.urgent", "cpu", "gpu", "io"],
                          handlers_factory=lambda: handlers_for(ledger), name="test-worker@localhost", sweep_seconds=1.0)
    worker.run()


def main() -> None:
    markers = Path(sys.argv[1])
    run_test_worker(lambda _ledger: recording_handlers(markers))


if __name__ == "__main__":
    main()
