"""The pipeline's state in the database: the truth that Celery messages only point at.

A run and all its stage rows are created in one transaction when a study is handed over (``start_run``); a stage row
in ``pending`` is the outbox entry that the dispatcher (or, if the broker was down, the sweeper) turns into a message.
Each stage is claimed before it runs (``claim``): a stage already done is never run again, a stage running elsewhere is
not run twice, and an attempts counter ends redelivery loops. When a run ends (failed, skipped), its stages still
waiting become ``not_run``: nothing shows them as pending work. The figures ``/metrics`` sums (a stage's seconds and
count, runs failed by stage) are added to ``metric_counters`` in the same transactions. The claim is a compare-and-set on (status, attempts), so
two workers that read the same row at once cannot both take it, on SQLite as on PostgreSQL.

**Back-off lives here.** A transient failure puts the stage back to ``pending`` with ``retry_at`` (``retry_later``);
until then ``claim`` refuses it with :class:`StageNotDue` whatever message asks: the retry's own carries the back-off
as its countdown, a duplicate (the VLM stage's group, the sweeper's, a redelivery) does not. The executor sends a
refused message again for then, and the sweeper leaves the stage alone until then (and the queue grace after it).

**A claim can be held by a thread** (the route's expert beside the VLM stage): the writes that record its end take
its ``attempt`` and apply only while that claim holds (else :class:`StageClaimLost`); ``release`` gives it back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db.counters import RUNS_FAILED, STAGE_SECONDS, STAGES_DONE, add_to_counter
from service.db.models import PipelineRun, RunStatus, StageRun, StageStatus, Study, StudyStatus, utcnow
from service.db.session import session_scope
from service.pipeline.contracts import StageContract, stage_result_for_storage
from service.pipeline.stages import STAGE_ORDER, Stage
from service.pipeline.time_limits import StageTimeLimits
from service.uid_collisions import has_patient_collision

__all__ = ["PipelineLedger", "StageClaim", "StageTicket", "RunNotFound", "StageNotDue", "StageClaimLost"]

LOGGER = logging.getLogger(__name__)

PATIENT_COLLISION_ERROR = ("its Study Instance UID arrived with two Patient IDs (two patients under one study UID): "
                           "not processed, so no report mixes them; ask the sender to correct its UIDs")


class RunNotFound(LookupError):
    pass


class StageClaimLost(RuntimeError):
    """A claim that no longer holds (given back, or re-queued and taken again): what it would record is dropped."""


@dataclass(frozen=True)
class StageTicket:
    """What a message carries: the stage to run and where to send it."""

    run_id: int
    stage: Stage
    priority: str


@dataclass(frozen=True)
class StageClaim:
    """A stage this worker now owns, with what it needs from earlier stages."""

    run_id: int
    study_uid: str
    stage: Stage
    attempt: int
    route: dict
    results: dict[str, dict]  # stage name -> result of every stage already done in this run
    worker: str = ""  # who claimed it (a handler that claims another stage of the run claims it under this name)


class StageNotDue(Exception):
    """A stage waiting for its retry (its back-off has not elapsed): not run now; ``ticket`` may ask again in
    ``wait_s``."""

    def __init__(self, ticket: StageTicket, retry_at: datetime, wait_s: float) -> None:
        self.ticket, self.retry_at, self.wait_s = ticket, retry_at, wait_s
        super().__init__(f"stage {ticket.stage.value} of run {ticket.run_id} waits for its retry at "
                         f"{retry_at.isoformat()} ({wait_s:.1f} s from now)")


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _stages_never_to_run(run: PipelineRun) -> None:
    """A run ended: its stages still waiting will never run (a stage running beside it finishes on its own)."""
    for stage in run.stages:
        if stage.status in (StageStatus.PENDING, StageStatus.QUEUED):
            stage.status = StageStatus.NOT_RUN


class PipelineLedger:
    def __init__(self, session_factory: sessionmaker[Session], max_attempts: int = 5,
                 time_limits: StageTimeLimits | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        """``clock`` (aware UTC datetimes) stamps and times everything here: back-off, queue and running times."""
        self.session_factory = session_factory
        self.max_attempts = max_attempts
        self.time_limits = time_limits or StageTimeLimits.defaults()
        self.clock = clock

    # -- runs -----------------------------------------------------------------------------------------------------

    def start_run(self, study_uid: str, trigger: str = "complete", from_stage: Stage | str | None = None) -> int | None:
        """Create a run for a completed study (exactly once per completion) or for a reprocess request.

        ``trigger='complete'`` takes the study only while it is ``complete`` (a conditional update), so the assembler's
        hook and the sweeper can both call it safely. ``trigger='reprocess'`` starts a new run at ``from_stage``
        (default: the stage that failed last, else the start), copying the results of the stages before it.
        """
        with session_scope(self.session_factory) as session:
            study = session.execute(select(Study).where(Study.study_uid == study_uid)).scalar_one_or_none()
            if study is None:
                raise RunNotFound(f"no study {study_uid!r}")
            if has_patient_collision(session, study.id):
                # Two patients under one Study Instance UID: no report may mix their images (service.uid_collisions).
                study.status = StudyStatus.FAILED
                study.error = PATIENT_COLLISION_ERROR
                if trigger == "complete":
                    return None
                session.commit()
                raise ValueError(f"study {study_uid}: {PATIENT_COLLISION_ERROR}")
            if trigger == "complete":
                taken = session.execute(
                    update(Study)
                    .where(Study.id == study.id, Study.status == StudyStatus.COMPLETE)
                    .values(status=StudyStatus.QUEUED, reprocess_requested=False, error="")
                    .execution_options(synchronize_session=False)
                ).rowcount
                if taken != 1:
                    return None
            elif study.status in (StudyStatus.RECEIVING,):
                raise ValueError(f"study {study_uid} is still receiving; it will be processed when complete")
            previous = session.execute(
                select(PipelineRun).where(PipelineRun.study_id == study.id).order_by(PipelineRun.run_number.desc())
            ).scalars().first()
            start = Stage(from_stage) if from_stage else None
            if trigger == "reprocess" and start is None and previous is not None and previous.error_stage:
                start = Stage(previous.error_stage)
            carried: dict[str, dict] = {}
            if start is not None and previous is not None:
                done = {s.stage: s.result for s in previous.stages if s.status == StageStatus.DONE}
                for stage in STAGE_ORDER[: STAGE_ORDER.index(start)]:
                    if stage.value not in done:
                        raise ValueError(f"cannot start at {start.value}: {stage.value} never finished in run "
                                         f"{previous.run_number}; reprocess from the start instead")
                    carried[stage.value] = done[stage.value]
            run = PipelineRun(
                study_id=study.id,
                run_number=(previous.run_number + 1) if previous else 1,
                trigger=trigger,
                priority=(previous.priority if previous and carried else "routine"),
                route=(previous.route if previous and carried else {}),
            )
            for stage in STAGE_ORDER:
                if stage.value in carried:
                    run.stages.append(StageRun(stage=stage.value, status=StageStatus.DONE, result=carried[stage.value]))
                else:
                    run.stages.append(StageRun(stage=stage.value))
            session.add(run)
            study.status = StudyStatus.QUEUED
            study.error = ""
            session.flush()
            return run.id

    def next_ticket(self, run_id: int) -> StageTicket | None:
        """The first stage of the run that is not done yet (None when the run has finished)."""
        with session_scope(self.session_factory) as session:
            run = session.get(PipelineRun, run_id)
            if run is None:
                raise RunNotFound(f"no pipeline run {run_id}")
            if run.status in (RunStatus.DONE, RunStatus.FAILED, RunStatus.SKIPPED):
                return None
            states = {s.stage: s.status for s in run.stages}
            for stage in STAGE_ORDER:
                if states.get(stage.value) != StageStatus.DONE:
                    return StageTicket(run_id, stage, run.priority)
        return None

    def mark_queued(self, ticket: StageTicket) -> None:
        with session_scope(self.session_factory) as session:
            session.execute(
                update(StageRun)
                .where(StageRun.run_id == ticket.run_id, StageRun.stage == ticket.stage.value,
                       StageRun.status == StageStatus.PENDING)
                .values(status=StageStatus.QUEUED, queued_at=self.clock())
                .execution_options(synchronize_session=False)
            )

    # -- one stage ------------------------------------------------------------------------------------------------

    def claim(self, run_id: int, stage: Stage | str, worker: str = "") -> StageClaim | None:
        """Take a stage to run it; None when it is done, running elsewhere, or its run has ended. Raises
        :class:`StageNotDue` while its back-off lasts."""
        stage = Stage(stage)
        now = self.clock()
        with session_scope(self.session_factory) as session:
            row = session.execute(
                select(StageRun).where(StageRun.run_id == run_id, StageRun.stage == stage.value).with_for_update()
            ).scalar_one_or_none()
            if row is None:
                raise RunNotFound(f"no stage {stage.value} in run {run_id}")
            run = row.run
            if run.status in (RunStatus.DONE, RunStatus.FAILED, RunStatus.SKIPPED):
                return None
            if row.status not in (StageStatus.PENDING, StageStatus.QUEUED):
                LOGGER.info("stage %s of run %s is %s: not run again", stage.value, run_id, row.status.value)
                return None
            if row.attempts >= self.max_attempts:
                gave_up = f"gave up after {row.attempts} attempts"  # with the last error an attempt left (a hard limit)
                self._fail(session, row, f"{gave_up}; last error: {row.error}" if row.error else gave_up)
                return None
            retry_at = _utc(row.retry_at)
            if retry_at is not None and retry_at > now:
                raise StageNotDue(StageTicket(run_id, stage, run.priority), retry_at, (retry_at - now).total_seconds())
            taken = session.execute(
                update(StageRun)
                .where(StageRun.id == row.id, StageRun.status == row.status, StageRun.attempts == row.attempts)
                .values(status=StageStatus.RUNNING, attempts=row.attempts + 1, started_at=now, worker=worker[:128])
                .execution_options(synchronize_session=False)
            ).rowcount
            if taken != 1:  # another worker took it between our read and this write
                LOGGER.info("stage %s of run %s was claimed elsewhere: not run again", stage.value, run_id)
                return None
            run.status = RunStatus.RUNNING
            run.study.status = StudyStatus.PROCESSING
            results = {s.stage: dict(s.result or {}) for s in run.stages if s.status == StageStatus.DONE}
            return StageClaim(run_id, run.study.study_uid, stage, row.attempts + 1, dict(run.route or {}), results,
                              worker)

    def finish(self, run_id: int, stage: Stage | str, result: StageContract | dict, route: dict | None = None,
               priority: str | None = None, *, attempt: int | None = None) -> StageTicket | None:
        """Record a stage's result; return the next stage to dispatch (None when the run is complete). With
        ``attempt``, only while that claim holds (else :class:`StageClaimLost`)."""
        stage = Stage(stage)
        result = stage_result_for_storage(stage, result)  # a contract must be this stage's (ContractError)
        with session_scope(self.session_factory) as session:
            row = self._stage_row(session, run_id, stage, attempt)
            row.status = StageStatus.DONE
            row.result = result
            row.finished_at = self.clock()
            row.error = ""
            if row.started_at is not None:
                add_to_counter(session, STAGES_DONE, stage.value)
                add_to_counter(session, STAGE_SECONDS, stage.value,
                               max(0.0, (_utc(row.finished_at) - _utc(row.started_at)).total_seconds()))
            run = row.run
            if route is not None:
                run.route = route
            if priority is not None:
                run.priority = priority
            # The next stage is the first one not done: stages may finish out of order (the expert beside the VLM).
            states = {s.stage: s.status for s in run.stages}
            following = next((s for s in STAGE_ORDER if states.get(s.value) != StageStatus.DONE), None)
            if following is None:
                run.status = RunStatus.DONE
                run.finished_at = self.clock()
                if run.study.status == StudyStatus.PROCESSING:
                    run.study.status = StudyStatus.DONE
                return None
            return StageTicket(run_id, following, run.priority)

    def retry_later(self, run_id: int, stage: Stage | str, error: str, delay_s: float = 0.0, *,
                    attempt: int | None = None) -> int:
        """A transient failure: back to ``pending`` with the error kept, not to be claimed for ``delay_s`` (its
        back-off); returns the attempts made so far. With ``attempt``, only while that claim holds."""
        with session_scope(self.session_factory) as session:
            row = self._stage_row(session, run_id, Stage(stage), attempt)
            row.status = StageStatus.PENDING
            row.error = error
            row.retry_at = self.clock() + timedelta(seconds=delay_s) if delay_s > 0 else None
            return row.attempts

    def release(self, run_id: int, stage: Stage | str, attempt: int, reason: str) -> bool:
        """Give back claim ``attempt`` of a stage still running under it (its claimer stops waiting for it): pending
        again, with ``reason`` as its error, to be run by its message or the sweeper. False if the claim had ended."""
        with session_scope(self.session_factory) as session:
            released = session.execute(
                update(StageRun)
                .where(StageRun.run_id == run_id, StageRun.stage == Stage(stage).value,
                       StageRun.status == StageStatus.RUNNING, StageRun.attempts == attempt)
                .values(status=StageStatus.PENDING, error=reason, retry_at=None)
                .execution_options(synchronize_session=False)
            ).rowcount
            return released == 1

    def note_error(self, run_id: int, stage: Stage | str, error: str, *, attempt: int | None = None) -> None:
        """Leave ``error`` on a stage that is still running (a worker about to end: its stage is re-queued later);
        with ``attempt``, only while that claim holds."""
        with session_scope(self.session_factory) as session:
            row = self._stage_row(session, run_id, Stage(stage))
            if row.status == StageStatus.RUNNING and attempt in (None, row.attempts):
                row.error = error

    def fail(self, run_id: int, stage: Stage | str, error: str, *, attempt: int | None = None) -> None:
        """The stage (and its run) failed; with ``attempt``, only while that claim holds."""
        with session_scope(self.session_factory) as session:
            self._fail(session, self._stage_row(session, run_id, Stage(stage), attempt), error)

    def skip(self, run_id: int, stage: Stage | str, reason: str) -> None:
        with session_scope(self.session_factory) as session:
            row = self._stage_row(session, run_id, Stage(stage))
            row.status = StageStatus.DONE
            row.result = {"skipped": reason}
            row.finished_at = self.clock()
            run = row.run
            run.status = RunStatus.SKIPPED
            run.finished_at = self.clock()
            run.error = reason
            run.study.status = StudyStatus.SKIPPED
            run.study.error = reason
            _stages_never_to_run(run)

    # -- the sweeper's view ---------------------------------------------------------------------------------------

    def stage_state(self, run_id: int, stage: Stage | str) -> tuple[StageStatus, dict, str]:
        """(status, result, error) of one stage, read fresh."""
        with session_scope(self.session_factory) as session:
            row = self._stage_row(session, run_id, Stage(stage))
            return row.status, dict(row.result or {}), row.error

    def completed_unqueued_studies(self) -> list[str]:
        with session_scope(self.session_factory) as session:
            return list(session.execute(select(Study.study_uid).where(Study.status == StudyStatus.COMPLETE)).scalars())

    def stalled(self, now: datetime | None = None, queued_grace: timedelta = timedelta(minutes=2),
                running_margin: timedelta = timedelta(minutes=1)) -> list[StageTicket]:
        """Stages that should be moving but are not: never sent (pending), a message lost (queued too long),
        or a worker lost (running past the stage's time limit). Running ones are put back to pending here. A stage
        waiting for its retry is due once its back-off has passed (pending), or that and the grace (queued)."""
        now = now or self.clock()
        tickets: list[StageTicket] = []
        with session_scope(self.session_factory) as session:
            rows = session.execute(
                select(StageRun, PipelineRun.priority)
                .join(PipelineRun, PipelineRun.id == StageRun.run_id)
                .where(PipelineRun.status.in_([RunStatus.PENDING, RunStatus.RUNNING]),
                       StageRun.status.in_([StageStatus.PENDING, StageStatus.QUEUED, StageStatus.RUNNING]))
            ).all()
            current: dict[int, tuple[StageRun, str]] = {}
            for row, priority in rows:
                best = current.get(row.run_id)
                if best is None or STAGE_ORDER.index(Stage(row.stage)) < STAGE_ORDER.index(Stage(best[0].stage)):
                    current[row.run_id] = (row, priority)
            for row, priority in current.values():
                stage = Stage(row.stage)
                retry_at = _utc(row.retry_at)
                if row.status == StageStatus.PENDING:
                    due = retry_at is None or now >= retry_at
                elif row.status == StageStatus.QUEUED:
                    marks = [t for t in (_utc(row.queued_at), retry_at) if t is not None]
                    due = not marks or now - max(marks) > queued_grace
                else:
                    limit = timedelta(seconds=self.time_limits[stage].hard_s) + running_margin
                    due = _utc(row.started_at) is None or now - _utc(row.started_at) > limit
                    if due:
                        LOGGER.warning("stage %s of run %s ran past its limit: re-queued (a worker was lost)",
                                       stage.value, row.run_id)
                        row.status = StageStatus.PENDING
                if due:
                    tickets.append(StageTicket(row.run_id, stage, priority))
        return tickets

    def recover_worker(self, worker: str) -> list[StageTicket]:
        """A restarted worker takes back what it held when it died: its RUNNING stages go back to pending."""
        tickets = []
        with session_scope(self.session_factory) as session:
            rows = session.execute(
                select(StageRun, PipelineRun.priority)
                .join(PipelineRun, PipelineRun.id == StageRun.run_id)
                .where(StageRun.worker == worker[:128], StageRun.status == StageStatus.RUNNING)
                .with_for_update()
            ).all()
            for row, priority in rows:
                LOGGER.warning("stage %s of run %s was running when worker %s stopped: re-queued",
                               row.stage, row.run_id, worker)
                row.status = StageStatus.PENDING
                tickets.append(StageTicket(row.run_id, Stage(row.stage), priority))
        return tickets

    def stage_counts(self) -> dict[tuple[str, str], int]:
        with session_scope(self.session_factory) as session:
            rows = session.execute(select(StageRun.stage, StageRun.status, func.count()).group_by(StageRun.stage, StageRun.status))
            return {(stage, StageStatus(status).value): n for stage, status, n in rows}

    # -- internals ------------------------------------------------------------------------------------------------

    @staticmethod
    def _stage_row(session: Session, run_id: int, stage: Stage, attempt: int | None = None) -> StageRun:
        """The stage's row, locked; with ``attempt``, only while claim ``attempt`` holds (running under it): a
        conditional write takes the row's write lock first, so the check and what follows are one step."""
        if attempt is not None:
            held = session.execute(
                update(StageRun)
                .where(StageRun.run_id == run_id, StageRun.stage == stage.value,
                       StageRun.status == StageStatus.RUNNING, StageRun.attempts == attempt)
                .values(status=StageStatus.RUNNING)
                .execution_options(synchronize_session=False)
            ).rowcount
            if held != 1:
                raise StageClaimLost(f"claim {attempt} of stage {stage.value} in run {run_id} no longer holds")
        row = session.execute(
            select(StageRun).where(StageRun.run_id == run_id, StageRun.stage == stage.value).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            raise RunNotFound(f"no stage {stage.value} in run {run_id}")
        return row

    def _fail(self, session: Session, row: StageRun, error: str) -> None:
        row.status = StageStatus.FAILED
        row.error = error
        row.finished_at = self.clock()
        run = row.run
        if run.status == RunStatus.FAILED:  # the first failure is the cause (the expert failing under the VLM stage)
            return
        run.status = RunStatus.FAILED
        run.error = error
        run.error_stage = row.stage
        run.finished_at = self.clock()
        run.study.status = StudyStatus.FAILED
        run.study.error = f"{row.stage}: {error}"
        _stages_never_to_run(run)
        add_to_counter(session, RUNS_FAILED, row.stage)
        LOGGER.error("run %s failed in stage %s: %s", run.id, row.stage, error)
