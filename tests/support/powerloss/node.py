"""``m3edge scp`` with its HOME under the power-loss simulator: start it, send, ``power_cut()``, start it again.

    node = PowerLossNode(tmp_path / "home", tmp_path / "powerloss", powerloss_shim).start()
    ...                                   # storescu to node.port
    report = node.power_cut("strict")     # SIGKILL to the node and its receiving processes, then the cut of HOME
    node.start()                          # recovery runs on what a disk could hold; recorded again for the next cut
    rows = node.query("SELECT sop_instance_uid, path FROM instances")
    node.stop()

HOME holds everything the node writes: the spool and the SQLite databases (``m3edge.db``, ``broker.db``, their WAL,
journal and -shm files). The node's settings come from ``env`` over a clean environment (no ``M3EDGE_*`` from the
caller's, so the embedded SQLite database and file broker are used). Queries run in a process under the recorder
too, so reading the database never changes HOME behind the recording's back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.m3edge_processes import M3edgeProcess
from tests.support.ports import free_port
from tests.support.powerloss.durability import CutModel
from tests.support.powerloss.simulator import CutReport, PowerLossSimulator

__all__ = ["PowerLossNode"]

_QUERY = """
import json, sqlite3, sys
connection = sqlite3.connect(sys.argv[1], timeout=30)
try:
    print(json.dumps(connection.execute(sys.argv[2], json.loads(sys.argv[3])).fetchall()))
finally:
    connection.close()
"""


class PowerLossNode:
    """``m3edge scp`` on a free port whose HOME is recorded by a :class:`PowerLossSimulator`."""

    def __init__(self, home: Path, workdir: Path, shim: Path, *, env: Mapping[str, str] | None = None,
                 port: int | None = None, slow_directory_sync_ms: int = 0) -> None:
        """``env``: the node's settings (``M3EDGE_*``) over the defaults here; ``slow_directory_sync_ms``: see
        :meth:`PowerLossSimulator.env`."""
        self.home = Path(home)
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.simulator = PowerLossSimulator(self.home, self.workdir / "recording", shim).arm()
        base = {key: value for key, value in os.environ.items() if not key.startswith("M3EDGE_")}
        self.settings = {
            "M3EDGE_HOME": str(self.home), "M3EDGE_DICOM_HOST": "127.0.0.1", "M3EDGE_DICOM_PORT": str(self.port),
            "M3EDGE_SPOOL_RESERVE_BYTES": "0", **(env or {}),
        }
        process_env = self.simulator.env({**base, **self.settings}, slow_directory_sync_ms=slow_directory_sync_ms)
        self.process = M3edgeProcess("scp", ["scp"], process_env, self.workdir / "logs", new_session=True)
        self.cuts: list[CutReport] = []

    @property
    def spool(self) -> Path:
        return self.home / "spool"

    @property
    def log(self) -> Path:
        return self.process.log

    def start(self, timeout: float = 120) -> PowerLossNode:
        self.process.start(f"listening on 127.0.0.1:{self.port}", timeout=timeout)
        return self

    def kill(self) -> None:
        """SIGKILL to the node and every process it started, at once; HOME stays as the kernel holds it (to cut it,
        or to look at every crash point of the recording with ``simulator.preview(at=simulator.crash_points())``)."""
        self.process.kill9()
        self.process.process = None

    def power_cut(self, model: CutModel | str = CutModel.STRICT, *, seed: int | None = None,
                  keep_probability: float = 0.5) -> CutReport:
        """Kill the node and every process it started at once, and cut HOME to what a disk could hold."""
        self.kill()
        report = self.simulator.cut(model, seed=seed, keep_probability=keep_probability)
        self.cuts.append(report)
        return report

    def query(self, sql: str, parameters: list[Any] | tuple[Any, ...] = (), *, database: str = "m3edge.db") -> list:
        """Rows of ``sql`` on a SQLite database in HOME, read by a process under the recorder."""
        completed = subprocess.run(
            [sys.executable, "-c", _QUERY, str(self.home / database), sql, json.dumps(list(parameters))],
            env=self.simulator.env(), capture_output=True, text=True, timeout=60,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"query on {database} failed: {completed.stderr[-2000:]}")
        return json.loads(completed.stdout)

    def stop(self) -> int | None:
        return self.process.stop()

    def __enter__(self) -> PowerLossNode:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()
