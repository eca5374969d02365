"""Liveness, readiness and Prometheus metrics: no token needed, and no patient data in any of them."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from dicom_node.scp.status import NodeStatusFile
from service.api.problems import Problem

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="The database answers, the spool is writable, and the DICOM node (if one runs beside "
                               "this HOME) accepts associations")
def readyz(request: Request) -> dict:
    settings = request.app.state.settings
    checks: dict[str, str] = {}
    try:
        with request.app.state.session_factory() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready
        checks["database"] = f"error: {exc.__class__.__name__}"
    spool = settings.spool_dir
    checks["spool"] = "ok" if spool.is_dir() and _writable(spool) else "missing or not writable"
    node = NodeStatusFile(settings.dicom_status_file).read()
    if node is not None:  # a node publishes beside this HOME: it must be accepting (no file: the API runs alone)
        checks["dicom"] = node.problem() or "ok"
    if any(v != "ok" for v in checks.values()):
        raise Problem(503, "not ready", "; ".join(f"{k}: {v}" for k, v in checks.items()))
    return {"status": "ready", "checks": checks}


def _writable(path) -> bool:
    import os

    return os.access(path, os.W_OK)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
