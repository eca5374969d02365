"""Prometheus metrics read from the database at scrape time, so every process (scp, api, workers) is counted.

A scrape costs the same however long the service has run: the backlog counts the stages of live runs only (an index
on the runs' status finds them), and what sums history (stage durations, failed runs, failed deliveries) is read from
``metric_counters``, added to as it happens. The studies gauge and the UID collisions are single GROUP BY counts.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db.counters import DELIVERIES_FAILED, RUNS_FAILED, STAGE_SECONDS, STAGES_DONE
from service.db.models import MetricCounter, PipelineRun, RunStatus, StageRun, StageStatus, Study, UidCollision

__all__ = ["DatabaseCollector", "make_registry"]

LOGGER = logging.getLogger(__name__)
LIVE_RUNS = (RunStatus.PENDING, RunStatus.RUNNING)
WAITING_STAGES = (StageStatus.PENDING, StageStatus.QUEUED)


class DatabaseCollector:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def collect(self):
        try:
            with self.session_factory() as session:
                yield from self._collect(session)
        except Exception:  # metrics must never take the API down
            LOGGER.exception("metrics collection failed")

    def _collect(self, session: Session):
        studies = GaugeMetricFamily("m3edge_studies", "Studies by status and modality", labels=["status", "modality"])
        for status, modality, n in session.execute(
            select(Study.status, Study.modalities, func.count()).group_by(Study.status, Study.modalities)
        ):
            studies.add_metric([status.value, modality or "unknown"], n)
        yield studies

        counters: dict[str, dict[str, float]] = {}
        for name, label, value in session.execute(select(MetricCounter.name, MetricCounter.label, MetricCounter.value)):
            counters.setdefault(name, {})[label] = value

        failed = CounterMetricFamily("m3edge_runs_failed", "Pipeline runs that failed, by stage", labels=["stage"])
        for stage, n in sorted(counters.get(RUNS_FAILED, {}).items()):
            failed.add_metric([stage], n)
        yield failed

        depth = GaugeMetricFamily("m3edge_stage_backlog", "Stages of live runs waiting to run",
                                  labels=["stage", "state"])
        for stage, status, n in session.execute(
            select(StageRun.stage, StageRun.status, func.count())
            .join(PipelineRun, PipelineRun.id == StageRun.run_id)
            .where(PipelineRun.status.in_(LIVE_RUNS), StageRun.status.in_(WAITING_STAGES))
            .group_by(StageRun.stage, StageRun.status)
        ):
            depth.add_metric([stage, StageStatus(status).value], n)
        yield depth

        durations = SummaryMetricFamily("m3edge_stage_duration_seconds", "Time spent in each stage", labels=["stage"])
        seconds = counters.get(STAGE_SECONDS, {})
        for stage, count in sorted(counters.get(STAGES_DONE, {}).items()):
            durations.add_metric([stage], count_value=count, sum_value=seconds.get(stage, 0.0))
        yield durations

        deliveries = CounterMetricFamily("m3edge_delivery_failures", "Delivery attempts that failed, by destination",
                                         labels=["destination"])
        for destination, n in sorted(counters.get(DELIVERIES_FAILED, {}).items()):
            deliveries.add_metric([destination], n)
        yield deliveries

        collisions = CounterMetricFamily(
            "m3edge_uid_collisions", "Series or SOP Instance UIDs that arrived in a second study (kept apart, flagged); "
            "kind=study: a Study Instance UID that arrived with a second Patient ID (not processed)",
            labels=["kind"],
        )
        for kind, n in session.execute(select(UidCollision.kind, func.count()).group_by(UidCollision.kind)):
            collisions.add_metric([kind.value], n)
        yield collisions


def make_registry(session_factory: sessionmaker[Session], dicom_status_file: Path | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(session_factory))
    if dicom_status_file is not None:
        from service.api.dicom_node_metrics import DicomNodeCollector

        registry.register(DicomNodeCollector(dicom_status_file))
    return registry
