"""The route's expert beside the VLM stage: claimed, run in a thread of its own, bounded by the expert stage's limits.

The VLM stage (``work/vlm.py``) starts the route's expert while the model generates its first turn and hands the
agent a pending result (:attr:`RouteExpert.future`). The expert stage stays a stage of its own in the ledger:

- **Claim.** The thread claims the expert stage under the VLM stage's worker name (the ledger makes a claim
  exclusive). When another worker holds it, the thread waits for its result; when it waits for its retry (back-off),
  the thread waits until then and claims it (its own message, queued behind this stage on a one-GPU worker, would
  come too late). Past ``EXPERT_TIMEOUT_SECONDS`` of waiting the VLM stage gets a transient error.
- **Limits.** The expert stage's own (``STAGE_TIME_LIMITS``), whatever the pool, since no pool bounds a thread. No
  signal interrupts a thread: at the soft limit the future fails with :class:`StageTimedOut`, so the VLM stage stops
  waiting, and an outcome that comes later is never taken (recorded as a timed-out attempt, retried with back-off).
  At the hard limit the worker ends with exit status 75 after noting it on the expert's row, exactly as for a stage
  of its own: its supervisor restarts it, and the restarted worker takes back what it held.
- **The VLM stage ends first** (done, failed or timed out) while the expert still runs: :meth:`RouteExpert.stop`
  gives the claim back (``ledger.release``): the expert stage is pending again, and its own message or the sweeper
  runs it elsewhere, or the VLM stage's retry claims it again. A thread cannot be killed: it runs on, still bounded
  by the hard limit, and what it records later is refused by the ledger (every write names the claim's attempt, which
  no longer holds) and dropped. Nothing it does can overwrite a later claim of the stage.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable

from service.db.models import StageStatus
from service.pipeline.contracts import ExpertStageResult, Route, stage_result_for_storage
from service.pipeline.executor import StageOutcome, backoff_seconds
from service.pipeline.ledger import PipelineLedger, StageClaim, StageClaimLost, StageNotDue
from service.pipeline.stages import PermanentStageError, Stage, TransientStageError
from service.pipeline.time_limits import StageTimedOut, StageTimeLimiter, StageTimeLimits
from service.pipeline.work.resources import StageResources

__all__ = ["RouteExpert"]

LOGGER = logging.getLogger(__name__)


class RouteExpert:
    """The route's expert for one VLM stage: :meth:`start` it, read :attr:`future`, :meth:`stop` when the stage ends.

    ``run_expert`` runs the claimed expert stage (``ExpertStage``); ``exit_process`` ends the worker at the expert's
    hard limit (tests pass a recorder); ``backoff`` is the retry delay after a failed attempt, as the executor's."""

    def __init__(self, resources: StageResources, run_expert: Callable[[StageClaim], StageOutcome],
                 vlm_claim: StageClaim, limits: StageTimeLimits, *, exit_process: Callable[[int], object] = os._exit,
                 backoff: Callable[[int], float] = backoff_seconds, poll_s: float = 0.2) -> None:
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.ledger = PipelineLedger(resources.session_factory, time_limits=limits)
        self.run_id, self.worker, self.study_uid = vlm_claim.run_id, vlm_claim.worker, vlm_claim.study_uid
        self._run_expert = run_expert
        self._wait_s = resources.settings.expert_timeout_seconds
        self._soft_s = limits[Stage.EXPERT].soft_s
        self._limiter = StageTimeLimiter(limits, on_hard_limit=self._note_hard_limit, exit_process=exit_process)
        self._backoff = backoff
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._claim: StageClaim | None = None
        self._thread = threading.Thread(target=self._main, name="m3edge-route-expert", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, reason: str) -> bool:
        """The VLM stage ends: stop waiting, and give back the expert's claim if it is still running under it (True
        then); ``reason`` becomes its error."""
        with self._lock:
            self._stopped.set()
            claim = self._claim
        self._settle(exception=TransientStageError("the vlm stage that waited for the route's expert ended"))
        if claim is None or not self.ledger.release(claim.run_id, Stage.EXPERT, claim.attempt, reason):
            return False
        LOGGER.warning("study %s: the route's expert was still running when the vlm stage ended: its claim is given "
                       "back (%s)", self.study_uid, reason)
        return True

    def join(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the thread to end (tests); True when it has."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # -- the thread ---------------------------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            claim = self._take()
            if claim is not None:
                self._run(claim)
        except (TransientStageError, PermanentStageError) as exc:  # its finished result could not be read back
            self._settle(exception=exc)
        except BaseException as exc:  # the database went away, say: the VLM stage gets it as transient
            LOGGER.exception("study %s: the route's expert beside the vlm stage failed", self.study_uid)
            self._settle(exception=TransientStageError(f"the route's expert: {exc.__class__.__name__}: {exc}"))

    def _take(self) -> StageClaim | None:
        """Claim the expert stage, or wait for whoever runs it; None when its outcome is settled without us."""
        deadline = time.monotonic() + self._wait_s
        while not self._stopped.is_set():
            status, result, error = self.ledger.stage_state(self.run_id, Stage.EXPERT)
            pause = self._poll_s
            if status == StageStatus.DONE:
                self._settle(result=ExpertStageResult.read(result).expert_result())
                return None
            if status == StageStatus.FAILED:
                self._settle(exception=PermanentStageError(f"the route's expert failed: {error}"))
                return None
            if status == StageStatus.NOT_RUN:
                self._settle(exception=PermanentStageError("the run ended before the route's expert ran"))
                return None
            if status in (StageStatus.PENDING, StageStatus.QUEUED):
                try:
                    claim = self.ledger.claim(self.run_id, Stage.EXPERT, self.worker)
                except StageNotDue as exc:
                    pause = exc.wait_s
                else:
                    if claim is not None and self._hold(claim):
                        return claim
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._settle(exception=TransientStageError(
                    f"the route's expert did not finish in EXPERT_TIMEOUT_SECONDS ({self._wait_s:g} s): it is "
                    f"{status.value} elsewhere or waits for its retry"))
                return None
            self._stopped.wait(min(pause, remaining))
        return None

    def _hold(self, claim: StageClaim) -> bool:
        """Keep ``claim`` for :meth:`stop` to give back; a stage that stopped meanwhile gets it back at once."""
        with self._lock:
            if not self._stopped.is_set():
                self._claim = claim
                return True
        self.ledger.release(claim.run_id, Stage.EXPERT, claim.attempt, "given back: the vlm stage had ended")
        return False

    def _run(self, claim: StageClaim) -> None:
        LOGGER.info("study %s: expert %s starts beside the model's first turn", self.study_uid,
                    Route.of(claim).expert.value)
        run_id, attempt = claim.run_id, claim.attempt
        try:
            with self._limiter.limit(Stage.EXPERT, run_id, on_soft_limit=self._soft_limit_passed):
                outcome = self._run_expert(claim)
            result = stage_result_for_storage(Stage.EXPERT, outcome.result)  # the expert stage's own contract
        except TransientStageError as exc:  # a timed-out attempt too: retried after its back-off
            self._record(lambda: self.ledger.retry_later(run_id, Stage.EXPERT, str(exc), self._backoff(attempt),
                                                         attempt=attempt))
            self._settle(exception=exc)
        except PermanentStageError as exc:
            self._record(lambda: self.ledger.fail(run_id, Stage.EXPERT, str(exc), attempt=attempt))
            self._settle(exception=exc)
        except BaseException as exc:  # the expert stage fails visibly, as the executor would record it
            error = f"{exc.__class__.__name__}: {exc}"
            self._record(lambda: self.ledger.fail(run_id, Stage.EXPERT, error, attempt=attempt))
            self._settle(exception=PermanentStageError(error))
        else:
            if self._record(lambda: self.ledger.finish(run_id, Stage.EXPERT, result, attempt=attempt)):
                self._settle(result=ExpertStageResult.read(result).expert_result())

    def _record(self, write: Callable[[], object]) -> bool:
        try:
            write()
        except StageClaimLost:
            LOGGER.info("study %s: the route's expert ended after its claim was given back: its outcome is dropped",
                        self.study_uid)
            return False
        return True

    def _soft_limit_passed(self) -> None:
        self._settle(exception=StageTimedOut(Stage.EXPERT, self._soft_s))

    def _note_hard_limit(self, run_id: int, stage: Stage, message: str) -> None:
        claim = self._claim
        if claim is not None:
            self.ledger.note_error(run_id, stage, f"{message} (worker {self.worker}, beside the vlm stage)",
                                   attempt=claim.attempt)

    def _settle(self, result=None, exception: BaseException | None = None) -> None:
        """The future's outcome, once: the first of the expert's end, its soft limit, or the stage stopping."""
        with self._lock:
            if self.future.done():
                return
            if exception is not None:
                self.future.set_exception(exception)
            else:
                self.future.set_result(result)
