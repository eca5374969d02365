"""The hostile-input suite's targets: real ``m3edge scp`` and ``m3edge serve`` processes on loopback, each with two
receiving processes, small limits (so every attack is bounded in bytes and seconds), and their memory read from the
kernel. See ``tests/security/README.md`` for what each test holds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicom_node.scp.status import NodeStatusFile
from tests.support.m3edge_processes import M3edgeProcess
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.process_memory import rss_bytes

MIB = 1 << 20
ALLOWED_AE = "PACS"
LIMITS = {
    "M3EDGE_DICOM_RECEIVERS": "2",
    "M3EDGE_DICOM_MAX_ASSOCIATIONS": "4",
    "M3EDGE_DICOM_ASSOCIATE_TIMEOUT_SECONDS": "2",
    "M3EDGE_DICOM_MAX_INSTANCE_BYTES": str(16 * MIB),
    "M3EDGE_DICOM_MAX_INFLATED_BYTES": str(32 * MIB),
}


@dataclass
class RunningNode:
    process: M3edgeProcess
    home: Path
    port: int
    env: dict[str, str]
    api: str | None = None

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def status(self):
        return NodeStatusFile(self.home / "run" / "dicom-node.json").read()

    def receivers(self) -> list[int]:
        """The pids of the receiving processes, once both are accepting."""
        status = wait_for(lambda: (s := self.status()) is not None and s.receivers_ready == 2 and s, timeout=120,
                          message="the receiving processes never became ready")
        return list(status.receiver_pids)

    def receivers_rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.receivers())


def _environment(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3EDGE_")}
    env.update(M3EDGE_HOME=str(home), M3EDGE_DICOM_HOST="127.0.0.1", M3EDGE_SPOOL_RESERVE_BYTES="0",
               M3EDGE_DICOM_ALLOWED_AES=f"{ALLOWED_AE}@127.0.0.1", TCP_NODELAY="1", **LIMITS)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def scp_node(tmp_path_factory) -> Iterator[RunningNode]:
    """``m3edge scp`` (no pipeline), shared by a module's tests."""
    home = tmp_path_factory.mktemp("scp") / "home"
    port = free_port()
    env = _environment(home, M3EDGE_DICOM_PORT=str(port))
    process = M3edgeProcess("scp", ["scp", "--no-pipeline"], env, home.parent).start(" listening on ", timeout=180)
    node = RunningNode(process, home, port, env)
    try:
        node.receivers()
        yield node
    finally:
        process.stop()


@pytest.fixture(scope="module")
def serve_node(tmp_path_factory) -> Iterator[RunningNode]:
    """``m3edge serve`` (node, API, an in-process worker), shared by a module's tests; STOW-RS limits small."""
    home = tmp_path_factory.mktemp("serve") / "home"
    port, api_port = free_port(), free_port()
    env = _environment(home, M3EDGE_DICOM_PORT=str(port), M3EDGE_API_PORT=str(api_port),
                       M3EDGE_DEMO_MODELS_WHEN_EMPTY="false", M3EDGE_STUDY_IDLE_SECONDS="3600",
                       M3EDGE_STOW_MAX_REQUEST_BYTES=str(320 * MIB), M3EDGE_STOW_MAX_CONCURRENT_REQUESTS="1",
                       M3EDGE_DICOM_MAX_INSTANCE_BYTES=str(512 * MIB))
    process = M3edgeProcess("serve", ["serve"], env, home.parent).start("m3edge serving", timeout=240)
    node = RunningNode(process, home, port, env, api=f"http://127.0.0.1:{api_port}")
    try:
        node.receivers()
        yield node
    finally:
        process.stop()
