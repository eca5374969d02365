"""A real pipeline worker process (Celery, the configured broker and database) running TEST-DOUBLE stage handlers.

Each handler writes a marker file ``<markers>/<run>-<stage>-<attempt>``; the expert handler waits for
``<markers>/release`` so that a test can kill the process while that stage is running.
Run: ``python -m tests.support.pipeline_worker MARKERS_DIR`` with M3EDGE_* settings in the environment.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from service.config import Settings
from service.db.session import create_db_engine, make_session_factory
from service.logs import configure_logging
from service.pipeline.executor import StageOutcome
from service.pipeline.stages import Stage
from service.pipeline.worker import PipelineWorker


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


def main() -> None:
    markers = Path(sys.argv[1])
    settings = Settings.load()
    configure_logging("INFO")
    factory = make_session_factory(create_db_engine(settings.effective_database_url))
    worker = PipelineWorker(settings, factory, lambda: recording_handlers(markers), ["cpu.urgent", "gpu.urgent",
                            "io.urgent", "cpu", "gpu", "io"], name="test-worker@localhost", sweeper_interval_s=1.0)
    worker.run()


if __name__ == "__main__":
    main()
