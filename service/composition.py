"""The composition root: the one place that builds the running service's parts from the settings.

Every command and the API call it: ``m3edge serve`` (:func:`build_service`: recorder, pipeline worker child, sweeper,
assembler, metadata keeper, DICOM node, HTTP API), ``m3edge scp`` (:func:`build_pipeline` and :func:`build_node`), ``m3edge worker``
(:func:`build_worker`), ``m3edge api`` (:func:`build_api`), ``m3edge studies reprocess`` (:func:`build_pipeline`).
Each part takes what it works with as arguments; nothing here is read from a global. The stage time limits are built
once per process (:func:`stage_time_limits`) and every part reads them from the ledger; there is one default sender
(``service.pipeline.delivery.default_sender``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from celery import Celery
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.scp import DicomNode
from service.api.app import create_app
from service.api.server import ApiThread
from service.assembly import build_assembler
from service.config import ConfigurationError, Settings
from service.dicomweb.metadata_keeper import MetadataKeeper
from service.dicomweb.query_retrieve import QueryRetrieveFactory
from service.ingest import DatabaseRecorder
from service.pipeline.celery_app import CeleryDispatcher, create_celery
from service.pipeline.delivery import Sender, default_sender
from service.pipeline.executor import StageHandler
from service.pipeline.intake import PipelineIntake, PipelineSweeper
from service.pipeline.ledger import PipelineLedger
from service.pipeline.stages import Stage
from service.pipeline.time_limits import StageTimeLimits
from service.pipeline.worker import PipelineWorker
from service.running import RunningService, ServicePart
from service.worker_process import WorkerProcess

__all__ = ["Pipeline", "stage_time_limits", "build_celery", "build_pipeline", "build_worker", "build_api", "build_node",
           "build_service", "log_study_complete"]

LOGGER = logging.getLogger(__name__)


def stage_time_limits(settings: Settings) -> StageTimeLimits:
    """The stage limits ``STAGE_TIME_LIMITS`` sets over the defaults; a ConfigurationError names a bad one."""
    try:
        return StageTimeLimits.from_settings(settings)
    except ValueError as exc:
        raise ConfigurationError(f"STAGE_TIME_LIMITS: {exc}") from exc


def build_celery(settings: Settings) -> Celery:
    """A sending-only Celery app on the settings' broker (``m3edge doctor`` checks the broker with it)."""
    return create_celery(settings, stage_time_limits(settings))


@dataclass(frozen=True)
class Pipeline:
    """What sends work to the workers: the ledger (state in the database), the Celery app, the dispatcher, the intake
    (a run per completed study) and the sweeper (re-sends what the broker could not take or a worker dropped)."""

    ledger: PipelineLedger
    app: Celery
    dispatcher: CeleryDispatcher
    intake: PipelineIntake
    sweeper: PipelineSweeper


def build_pipeline(settings: Settings, session_factory: sessionmaker[Session], *,
                   components_factory: Callable[[], object] | None = None,
                   sweep_seconds: float | None = None) -> Pipeline:
    """The pipeline's sending side; with ``components_factory`` its Celery app also runs tasks (a worker)."""
    ledger = PipelineLedger(session_factory, time_limits=stage_time_limits(settings))
    app = create_celery(settings, ledger.time_limits, components_factory)
    dispatcher = CeleryDispatcher(app, ledger)
    intake = PipelineIntake(ledger, dispatcher)
    sweeper = PipelineSweeper(intake, sweep_seconds or settings.pipeline_sweep_seconds)
    return Pipeline(ledger, app, dispatcher, intake, sweeper)


def build_worker(settings: Settings, session_factory: sessionmaker[Session], queues: Sequence[str], *,
                 handlers_factory: Callable[[], Mapping[Stage, StageHandler]] | None = None,
                 sender_factory: Callable[[], Sender] | None = None, name: str | None = None,
                 sweep_seconds: float | None = None, pool: str = "solo") -> PipelineWorker:
    """A pipeline worker reading ``queues``: the real stage handlers unless ``handlers_factory`` gives others (made
    once, on the first task, in the worker's process), sending with ``default_sender`` unless told otherwise."""
    if handlers_factory is None:
        def handlers_factory() -> Mapping[Stage, StageHandler]:
            from service.pipeline.work import build_stage_handlers  # the models' libraries: only in a worker

            return build_stage_handlers(settings, session_factory, sender=default_sender(settings.dicom_ae_title),
                                        time_limits=pipeline.ledger.time_limits)

    worker: PipelineWorker | None = None
    pipeline = build_pipeline(settings, session_factory, components_factory=lambda: worker.make_components(),
                              sweep_seconds=sweep_seconds)
    worker = PipelineWorker(pipeline, session_factory, handlers_factory, queues, name=name, pool=pool,
                            sender_factory=sender_factory or (lambda: default_sender(settings.dicom_ae_title)))
    return worker


def build_api(settings: Settings, session_factory: sessionmaker[Session] | None = None,
              pipeline: Pipeline | None = None) -> FastAPI:
    """The HTTP API on ``session_factory`` (else an engine on the settings' database), sending through ``pipeline``
    (else one built here)."""
    if session_factory is None:
        from service.db.session import create_db_engine, make_session_factory

        session_factory = make_session_factory(create_db_engine(settings.effective_database_url))
    if pipeline is None:
        pipeline = build_pipeline(settings, session_factory)
    return create_app(settings, session_factory, pipeline.intake)


def build_node(settings: Settings, session_factory: sessionmaker[Session], recorder: DatabaseRecorder) -> DicomNode:
    """The DICOM node recording through ``recorder`` (in this process, also for what the receiving processes of
    ``DICOM_RECEIVERS`` > 1 journal: they only receive); each receiving process builds its own Query/Retrieve SCP
    from the picklable factory."""
    return DicomNode(settings, recorder, query_retrieve_factory=QueryRetrieveFactory(settings, session_factory))


def log_study_complete(study_uid: str) -> None:
    """The study-complete hook when completed studies do not enter the pipeline."""
    LOGGER.info("study %s is complete", study_uid)


def build_service(
    settings: Settings,
    session_factory: sessionmaker[Session],
    on_study_complete: Callable[[str], object] | None = None,
    *,
    pipeline: bool = True,
    worker: bool = True,
    assemble: bool = True,
    api: bool = True,
) -> tuple[RunningService, DicomNode]:
    """The parts of the running service in start order; returns it and the DICOM node (whose ``port`` is known once
    started). ``m3edge serve`` runs every part; ``m3edge scp`` runs it without worker and API.

    ``pipeline``: completed studies enter the pipeline (hook + sweeper); ``worker``: run a worker child process;
    ``assemble``: run the study assembler; ``api``: serve the HTTP API. ``on_study_complete`` replaces the pipeline's
    hook (tests)."""
    recorder = DatabaseRecorder(session_factory)
    parts = [ServicePart("database recorder", recorder.start_for_node, recorder.close)]
    hook = on_study_complete or log_study_complete
    sending = build_pipeline(settings, session_factory) if pipeline or api else None
    if pipeline and sending is not None:
        hook = on_study_complete or sending.intake.on_study_complete
        if worker:
            child = WorkerProcess()
            parts.append(ServicePart("pipeline worker", child.start, child.stop))
        parts.append(ServicePart("pipeline sweeper", sending.sweeper.start, sending.sweeper.stop))
    if assemble:
        assembler = build_assembler(settings, session_factory, hook)
        parts.append(ServicePart("study assembler", assembler.start, assembler.stop))
    keeper = MetadataKeeper(session_factory, settings.spool_dir)
    parts.append(ServicePart("metadata keeper", keeper.start, keeper.stop))
    node = build_node(settings, session_factory, recorder)
    parts.append(ServicePart("DICOM node", node.start, node.stop))
    if api:
        server = ApiThread(create_app(settings, session_factory, sending.intake), settings)
        parts.append(ServicePart("HTTP API", server.start, server.stop))
    return RunningService(parts), node
