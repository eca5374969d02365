"""``m3edge worker`` as a supervised child of ``m3edge serve``: restarted (after a pause) if it dies.

A child rather than a thread: Celery's worker wants the main thread (signal handlers, warm shutdown), and a model
that crashes or exhausts memory takes down only the worker, never the DICOM node; it is also exactly what production
runs, so both modes share one code path. ``serve`` restarts it itself because the embedded default has no service
manager around it; in production compose (``restart: unless-stopped``) or systemd restarts ``m3edge worker``, and
nothing of ours supervises it. The child asks the kernel to end it with its parent (``--parent-pid``:
``dicom_node.parent_process``), so it never outlives ``serve``, even a SIGKILL of it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence

from service.pipeline.time_limits import HARD_LIMIT_EXIT_CODE

__all__ = ["WorkerProcess", "WORKER_CLI"]

LOGGER = logging.getLogger(__name__)
WORKER_CLI = [sys.executable, "-c", "from service.cli.main import main; main()", "worker"]


class WorkerProcess:
    """Starts ``m3edge worker --queues QUEUES --parent-pid PID`` and restarts it when it exits; stops it warmly."""

    def __init__(self, queues: str = "cpu,gpu,io", restart_delay_s: float = 2.0, *,
                 command: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> None:
        """``command`` and ``env`` replace ``m3edge worker --queues QUEUES`` and this process's environment."""
        self.command = list(command or [*WORKER_CLI, "--queues", queues, "--parent-pid", str(os.getpid())])
        self.env = dict(os.environ if env is None else env)
        self.restart_delay_s = restart_delay_s
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="m3edge-worker-watch", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        with self._lock:
            self.process = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL)
        LOGGER.info("pipeline worker started (pid %d)", self.process.pid)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            process = self.process
            if process is not None and process.poll() is not None and not self._stopping.is_set():
                why = " (a stage ran past its hard time limit)" if process.returncode == HARD_LIMIT_EXIT_CODE else ""
                LOGGER.error("pipeline worker (pid %d) exited with status %s%s; restarting in %.0f s", process.pid,
                             process.returncode, why, self.restart_delay_s)
                if self._stopping.wait(self.restart_delay_s):
                    return
                self.restarts += 1
                self._spawn()
            self._stopping.wait(0.5)

    def stop(self, timeout: float = 60.0) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        with self._lock:
            process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # warm shutdown: the stage in progress finishes
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            LOGGER.warning("pipeline worker did not stop in %.0f s: killed (its stage is re-queued at next start)",
                           timeout)
            process.kill()
            process.wait(timeout=10)
