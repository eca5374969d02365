"""One of several pipeline worker processes sharing a database and broker (scale-out), with TEST-DOUBLE stage handlers.

Each handler writes ``<markers>/<run>-<stage>-<attempt>`` holding the worker's name. A worker's first stage waits until
another worker has started one too (``<markers>/started-<worker>`` files), so a test can show work split between
processes without relying on timing. Run:
``python -m tests.support.scale_out_worker MARKERS_DIR WORKER_NAME QUEUES`` with M3EDGE_* settings in the environment.
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
from service.composition import build_worker
from service.pipeline.worker import parse_queues

BARRIER_TIMEOUT_S = 60.0


def _wait_for_another_worker(markers: Path, name: str) -> None:
    (markers / f"started-{name}").write_text(name)
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(markers.glob("started-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)


def recording_handlers(markers: Path, name: str):
    first = {"pending": True}

    def make(stage: Stage):
        def handle(claim):
            if first["pending"]:
                first["pending"] = False
                _wait_for_another_worker(markers, name)
            with open(markers / f"{claim.run_id}-{stage.value}-{claim.attempt}", "x") as marker:
                marker.write(name)
            return StageOutcome({"stage": stage.value, "worker": name})
        return handle
    return {stage: make(stage) for stage in Stage}


def main() -> None:
    markers, name, queues = Path(sys.argv[1]), sys.argv[2], parse_queues(sys.argv[3])
    settings = Settings.load()
    configure_logging("WARNING")
    factory = make_session_factory(create_db_engine(settings.effective_database_url))
    worker = build_worker(settings, factory, queues, handlers_factory=lambda: recording_handlers(markers, name),
                          name=name, sweep_seconds=1.0)
    worker.run()


if __name__ == "__main__":
    main()
