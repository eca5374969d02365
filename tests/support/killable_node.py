"""A DICOM node that a test can kill -9 and start again in milliseconds, for many crash cycles.

``python -m tests.support.killable_node HOME PORT`` imports everything and prepares the SQLite database in HOME once,
then waits on stdin: each line ``start`` forks a child that runs the real ``DicomNode`` (one receiving process, its
journal, the ``DatabaseRecorder`` on ``HOME/m3edge.db``) on PORT and answers ``<pid>`` once it listens (after its
journal replay). The test kills that pid with SIGKILL; the next ``start`` reaps it and forks a fresh node on the
same HOME. The fork is the only shortcut: the node in the child is the one ``m3edge scp`` runs (without the study
assembler), started from scratch each time (new engine, recorder, spool writer, journal).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def _serve(home: Path, port: int, ready_fd: int) -> None:
    from dicom_node.scp import DicomNode
    from service.db.session import create_db_engine, make_session_factory
    from service.ingest import DatabaseRecorder
    from tests.support.scp_node import node_settings

    settings = node_settings(home, dicom_port=port)
    engine = create_db_engine(settings.effective_database_url)
    recorder = DatabaseRecorder(make_session_factory(engine)).start_for_node()
    node = DicomNode(settings, recorder)
    node.start()
    os.write(ready_fd, f"{os.getpid()}\n".encode())
    os.close(ready_fd)
    while True:
        time.sleep(3600)


def main(argv: list[str]) -> None:
    home, port = Path(argv[0]), int(argv[1])
    import dicom_node.scp  # noqa: F401 - imported once, before any fork
    import service.ingest  # noqa: F401
    from service.cli.serve import prepare_database
    from tests.support.scp_node import node_settings

    home.mkdir(parents=True, exist_ok=True)
    prepare_database(node_settings(home, dicom_port=port))
    child = 0
    for line in sys.stdin:
        if line.strip() != "start":
            continue
        if child:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(child, 0)
        read_fd, write_fd = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(read_fd)
            try:
                _serve(home, port, write_fd)
            finally:
                os._exit(1)
        os.close(write_fd)
        with os.fdopen(read_fd) as ready:
            answer = ready.readline().strip()
        print(answer or "failed", flush=True)
    if child:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(child, 0)


if __name__ == "__main__":
    main(sys.argv[1:])
