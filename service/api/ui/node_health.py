"""The node's health as the admin page shows it: each check a named state and a sentence an operator can act on.

Every probe is bounded (short connect timeouts) and a failing one becomes an ``error`` line, never an exception, so a
broken part of the node cannot take the page that should show it down.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from dicom_node.intake.admission import DiskUsage
from service.config import Settings
from service.db.models import PipelineRun, RunStatus, StageRun, StageStatus, Study, utcnow
from service.home_files import spool_refusal

__all__ = ["HealthCheck", "NodeHealth", "WorkerActivity", "recent_failures", "worker_activity", "echo_destination"]

LOGGER = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class HealthCheck:
    name: str
    state: str  # ok | warning | error | none
    detail: str


@dataclass(frozen=True)
class WorkerActivity:
    running: list[tuple[str, str, str]]  # (study uid, stage, worker)
    recent_workers: list[str]


def _tcp_open(host: str, port: int) -> str | None:
    """None when something accepts a connection, else why not."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return exc.strerror or exc.__class__.__name__


def echo_destination(calling_ae: str, address) -> HealthCheck:
    """One C-ECHO to ``address`` (a DicomAddress) with short timeouts."""
    from dicom_node.scu import DeliveryError, StorageSCU

    scu = StorageSCU(calling_ae, connection_timeout=PROBE_TIMEOUT_S, acse_timeout=5.0, dimse_timeout=5.0)
    try:
        elapsed = scu.echo(address)
    except DeliveryError as exc:
        return HealthCheck(str(address), "error", str(exc))
    return HealthCheck(str(address), "ok", f"C-ECHO answered in {elapsed * 1000:.0f} ms")


class NodeHealth:
    """The checks of one node; the GPU probe imports torch once (slow) and remembers whether it could."""

    def __init__(self, settings: Settings, ledger) -> None:
        self.settings = settings
        self.ledger = ledger
        self._torch_checked = False
        self._torch = None

    def checks(self, session: Session) -> list[HealthCheck]:
        return [self.scp(), self.database(session), self.broker(), self.spool(), self.gpu()]

    def scp(self) -> HealthCheck:
        from dicom_node.network import DicomAddress

        port = self.settings.dicom_port
        if port == 0:
            return HealthCheck("DICOM SCP", "none", "no fixed port configured (M3EDGE_DICOM_PORT=0)")
        refused = _tcp_open("127.0.0.1", port)
        if refused is not None:
            return HealthCheck("DICOM SCP", "error", f"nothing listens on port {port} ({refused}): start 'm3edge scp' "
                                                     "or 'm3edge serve'")
        echo = echo_destination(self.settings.dicom_ae_title,
                                DicomAddress(self.settings.dicom_ae_title, "127.0.0.1", port))
        if echo.state == "ok":
            return HealthCheck("DICOM SCP", "ok",
                               f"{self.settings.dicom_ae_title} listens on port {port}; {echo.detail}")
        return HealthCheck("DICOM SCP", "warning", f"port {port} accepts connections but C-ECHO to our own AE failed: "
                                                   f"{echo.detail}")

    @staticmethod
    def database(session: Session) -> HealthCheck:
        try:
            session.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error is what the operator needs to see
            return HealthCheck("Database", "error", f"{exc.__class__.__name__}: the database does not answer")
        return HealthCheck("Database", "ok", f"{session.get_bind().dialect.name} answers")

    def broker(self) -> HealthCheck:
        url = self.settings.effective_broker_url
        parts = urlsplit(url)
        if parts.scheme.startswith("sqlite"):
            exists = Path(url.split(":///", 1)[-1]).exists()
            return HealthCheck("Broker", "ok", "embedded: a SQLite file in HOME"
                               + ("" if exists else " (created when the first task is sent)"))
        default_port = 6379 if parts.scheme.startswith("redis") else 5672
        host, port = parts.hostname or "localhost", parts.port or default_port
        refused = _tcp_open(host, port)
        shown = f"{parts.scheme}://{host}:{port}"  # never the credentials in the URL
        if refused is not None:
            return HealthCheck("Broker", "error", f"{shown} is not reachable ({refused})")
        return HealthCheck("Broker", "ok", f"{shown} accepts connections")

    def spool(self) -> HealthCheck:
        spool = self.settings.spool_dir
        if not spool.is_dir():
            return HealthCheck("Spool disk", "error", f"{spool} does not exist: run 'm3edge serve' or create it")
        detail = DiskUsage.of(spool).describe()
        refusal = spool_refusal(self.settings)
        if refusal is not None:
            return HealthCheck("Spool disk", "error", f"{detail}: new associations are refused")
        return HealthCheck("Spool disk", "ok", detail)

    def gpu(self) -> HealthCheck:
        if not self._torch_checked:
            self._torch_checked = True
            if importlib.util.find_spec("torch") is not None:
                import torch

                self._torch = torch
        torch = self._torch
        if torch is None or not torch.cuda.is_available():
            return HealthCheck("GPU", "none", "none (CPU inference)")
        parts = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            parts.append(f"{torch.cuda.get_device_name(index)}: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
        return HealthCheck("GPU", "ok", "; ".join(parts))

    def queues(self) -> dict[str, dict[str, int]]:
        """Stage rows by state, in pipeline order."""
        from service.pipeline.stages import STAGE_ORDER

        order = {stage.value: i for i, stage in enumerate(STAGE_ORDER)}
        by_stage: dict[str, dict[str, int]] = {}
        for (stage, status), n in sorted(self.ledger.stage_counts().items(), key=lambda kv: order.get(kv[0][0], 99)):
            by_stage.setdefault(stage, {})[status] = n
        return by_stage


def worker_activity(session: Session, recent: timedelta = timedelta(hours=1)) -> WorkerActivity:
    running = session.execute(
        select(Study.study_uid, StageRun.stage, StageRun.worker).join(PipelineRun, PipelineRun.id == StageRun.run_id)
        .join(Study, Study.id == PipelineRun.study_id).where(StageRun.status == StageStatus.RUNNING)
        .order_by(StageRun.started_at).limit(50)
    ).all()
    names = session.execute(
        select(StageRun.worker).where(StageRun.worker != "", StageRun.started_at >= utcnow() - recent).distinct()
        .order_by(StageRun.worker).limit(50)
    ).scalars().all()
    return WorkerActivity([(uid, stage, worker) for uid, stage, worker in running], list(names))


def recent_failures(session: Session, limit: int = 10) -> list[dict]:
    rows = session.execute(
        select(Study.study_uid, PipelineRun.run_number, PipelineRun.error_stage, PipelineRun.error,
               PipelineRun.finished_at).join(Study, Study.id == PipelineRun.study_id)
        .where(PipelineRun.status == RunStatus.FAILED).order_by(PipelineRun.id.desc()).limit(limit)
    ).all()
    return [{"study_uid": uid, "run_number": n, "stage": stage, "error": (error or "")[:300], "finished_at": at}
            for uid, n, stage, error, at in rows]
