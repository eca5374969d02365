"""Where completed studies enter the pipeline, and the sweeper that keeps every run moving."""

from __future__ import annotations

import logging
import threading

from service.pipeline.executor import Dispatcher
from service.pipeline.ledger import PipelineLedger

__all__ = ["PipelineIntake", "PipelineSweeper"]

LOGGER = logging.getLogger(__name__)


class PipelineIntake:
    """The study-complete hook the DICOM node's assembler calls (and what ``reprocess`` uses)."""

    def __init__(self, ledger: PipelineLedger, dispatcher: Dispatcher) -> None:
        self.ledger = ledger
        self.dispatcher = dispatcher

    def on_study_complete(self, study_uid: str) -> int | None:
        """Create the run (once per completion) and send its first stage; a broker that is down only delays it."""
        run_id = self.ledger.start_run(study_uid, "complete")
        if run_id is not None:
            self._send_next(run_id)
        return run_id

    def reprocess(self, study_uid: str, from_stage: str | None = None) -> int:
        run_id = self.ledger.start_run(study_uid, "reprocess", from_stage)
        assert run_id is not None
        self._send_next(run_id)
        return run_id

    def _send_next(self, run_id: int) -> None:
        ticket = self.ledger.next_ticket(run_id)
        if ticket is not None and not self.dispatcher.dispatch(ticket):
            LOGGER.warning("run %s: broker unavailable, the sweeper will send stage %s", run_id, ticket.stage.value)


class PipelineSweeper:
    """Periodically: hand over completed studies nobody took, and re-send stages that are not moving."""

    def __init__(self, intake: PipelineIntake, interval_s: float = 10.0) -> None:
        self.intake = intake
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep_once(self) -> int:
        """One pass; returns how many messages it sent."""
        sent = 0
        ledger, dispatcher = self.intake.ledger, self.intake.dispatcher
        for study_uid in ledger.completed_unqueued_studies():
            if ledger.start_run(study_uid, "complete") is not None:
                LOGGER.info("sweeper: study %s was complete but not queued; queued now", study_uid)
        for ticket in ledger.stalled():
            if dispatcher.dispatch(ticket):
                sent += 1
        return sent

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="m3edge-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep_once()
            except Exception:  # the sweeper must outlive a database or broker hiccup
                LOGGER.exception("sweeper pass failed; trying again in %.0f s", self.interval_s)
