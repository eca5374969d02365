"""Receiving processes that die are restarted, and the node says it is not ready meanwhile (issue 13, point 3):
kill -9 both receivers of a running ``serve``; /readyz answers 503, the container's health check fails and the
metrics count the deaths until they are back, then all are healthy again and a real caller associates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.security.conftest import ALLOWED_AE
from tests.support.dcmtk import echoscu
from tests.support.polling import wait_for

HEALTHCHECK = Path(__file__).resolve().parents[2] / "deploy" / "container" / "healthcheck.py"


def _container_check(serve_node) -> int:
    """The scp container's health check (``healthcheck.py dicom``) against this node's HOME."""
    return subprocess.run([sys.executable, str(HEALTHCHECK), "dicom"], capture_output=True, timeout=30,
                          env={**os.environ, "M3EDGE_HOME": str(serve_node.home)}).returncode


def _metric(base: str, name: str) -> float | None:
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.slow
def test_killed_receivers_are_restarted_and_readiness_follows(serve_node):
    base = serve_node.api
    assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
    assert _container_check(serve_node) == 0
    for pid in serve_node.receivers():
        os.kill(pid, signal.SIGKILL)
    not_ready = wait_for(lambda: (r := httpx.get(f"{base}/readyz", timeout=30)).status_code == 503 and r,
                         timeout=30, interval=0.1, message="/readyz stayed ready with both receivers dead")
    assert "receiving process" in not_ready.json()["detail"]
    assert _metric(base, "m3edge_dicom_receiver_deaths_total") == 2
    assert _metric(base, "m3edge_dicom_node_accepting") == 0
    assert _container_check(serve_node) == 1
    wait_for(lambda: httpx.get(f"{base}/readyz", timeout=30).status_code == 200, timeout=180, interval=0.5,
             message="the receiving processes never came back")
    assert echoscu(serve_node.port, calling_ae=ALLOWED_AE).returncode == 0
    assert _container_check(serve_node) == 0
    assert _metric(base, "m3edge_dicom_receiver_restarts_total") >= 1
    log = serve_node.process.text()
    assert log.count("died with signal SIGKILL") == 2
