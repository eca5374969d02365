"""Prometheus metrics read from the database at scrape time, so every process (scp, api, workers) is counted."""

from __future__ import annotations

import logging
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Delivery, PipelineRun, StageRun, StageStatus, Study

__all__ = ["DatabaseCollector", "make_registry"]

LOGGER = logging.getLogger(__name__)


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

        failed = CounterMetricFamily("m3edge_runs_failed", "Pipeline runs that failed, by stage", labels=["stage"])
        for stage, n in session.execute(
            select(PipelineRun.error_stage, func.count()).where(PipelineRun.error_stage != "")
            .group_by(PipelineRun.error_stage)
        ):
            failed.add_metric([stage], n)
        yield failed

        depth = GaugeMetricFamily("m3edge_stage_backlog", "Stages waiting to run", labels=["stage", "state"])
        durations = SummaryMetricFamily("m3edge_stage_duration_seconds", "Time spent in each stage", labels=["stage"])
        rows = session.execute(select(StageRun.stage, StageRun.status, StageRun.started_at, StageRun.finished_at)).all()
        backlog: dict[tuple[str, str], int] = {}
        sums: dict[str, list[float]] = {}
        for stage, status, started, finished in rows:
            if status in (StageStatus.PENDING, StageStatus.QUEUED):
                backlog[(stage, status.value)] = backlog.get((stage, status.value), 0) + 1
            elif status == StageStatus.DONE and started and finished:
                sums.setdefault(stage, []).append((finished - started).total_seconds())
        for (stage, state), n in backlog.items():
            depth.add_metric([stage, state], n)
        for stage, values in sums.items():
            durations.add_metric([stage], count_value=len(values), sum_value=sum(values))
        yield depth
        yield durations

        deliveries = CounterMetricFamily("m3edge_delivery_failures", "Deliveries that failed", labels=["destination"])
        for destination, n in session.execute(
            select(Delivery.destination, func.count()).where(Delivery.status == "failed").group_by(Delivery.destination)
        ):
            deliveries.add_metric([destination], n)
        yield deliveries


def make_registry(session_factory: sessionmaker[Session], dicom_status_file: Path | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(session_factory))
    if dicom_status_file is not None:
        from service.api.dicom_node_metrics import DicomNodeCollector

        registry.register(DicomNodeCollector(dicom_status_file))
    return registry
