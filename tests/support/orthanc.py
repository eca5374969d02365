"""A real Orthanc for the tests: its own configuration, storage and free ports in a temporary folder, never the
system service. Start it with ``OrthancServer(tmp_path).start()`` (or as a context manager); talk to its REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx

from tests.support.polling import wait_for
from tests.support.ports import free_port

__all__ = ["OrthancServer", "OrthancError"]


class OrthancError(RuntimeError):
    """Orthanc did not start, or a REST call failed; the message carries its log tail or answer."""


class OrthancServer:
    """One Orthanc process. ``modalities`` maps a name to ``(ae_title, host, port)``: peers it may store to.

    ``allow_unknown_callers=False`` makes it reject associations from AE titles that are not among its modalities.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        ae_title: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        allow_unknown_callers: bool = True,
        dicom_port: int | None = None,
        http_port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.ae_title = ae_title
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.modalities = dict(modalities or {})
        self.allow_unknown_callers = allow_unknown_callers
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=60)

    # -- life cycle -------------------------------------------------------------------------------------------------

    def configuration(self) -> dict:
        return {
            "Name": "m3edge-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": self.allow_unknown_callers,
            "DicomAlwaysAllowStore": self.allow_unknown_callers,
            "DicomCheckModalityHost": False,
            "DicomModalities": {name: list(peer) for name, peer in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "DicomScuTimeout": 30,
            "DicomAssociationCloseDelay": 0,
            "StableAge": 1,
            "ConcurrentJobs": 2,
            "HttpThreadsCount": 8,
            "DicomThreadsCount": 4,
            "SaveJobs": False,
            "SyncStorageArea": True,
        }

    def start(self, timeout: float = 60.0) -> OrthancServer:
        executable = shutil.which("Orthanc") or shutil.which("orthanc")
        if executable is None:
            raise OrthancError("Orthanc is not installed: run scripts/test, which installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.configuration(), indent=2))
        env = {**os.environ, "TCP_NODELAY": "1"}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [executable, "--verbose", str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.workdir,
            )
        try:
            wait_for(self._ready, timeout=timeout, interval=0.1, message="Orthanc did not answer GET /system")
        except TimeoutError as exc:
            self.stop()
            raise OrthancError(f"Orthanc did not start: {exc}\n{self.log_tail()}") from exc
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise OrthancError(f"Orthanc exited with status {self.process.returncode}\n{self.log_tail()}")
        try:
            return self.client.get("/system", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.client.close()

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- REST -------------------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise OrthancError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
        return response

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        self._call("PUT", f"/modalities/{name}", json={"AET": ae_title, "Host": host, "Port": port})

    def upload(self, path: Path) -> str:
        """Store a file through the REST API; return Orthanc's instance id."""
        return self._call("POST", "/instances", content=Path(path).read_bytes()).json()["ID"]

    def store_to_modality(self, modality: str, resources: list[str], timeout: float = 120) -> dict:
        """``POST /modalities/{name}/store``, synchronously: Orthanc sends the resources by C-STORE."""
        return self._call(
            "POST", f"/modalities/{modality}/store", json={"Resources": resources, "Synchronous": True},
            timeout=timeout,
        ).json()

    def echo(self, modality: str) -> bool:
        return self.client.post(f"/modalities/{modality}/echo", json={}).status_code == 200

    def instance_ids(self) -> list[str]:
        return self._call("GET", "/instances").json()

    def study_ids(self) -> list[str]:
        return self._call("GET", "/studies").json()

    def instance_tags(self, instance_id: str) -> dict:
        return self._call("GET", f"/instances/{instance_id}/simplified-tags").json()

    def instance_file(self, instance_id: str) -> bytes:
        return self._call("GET", f"/instances/{instance_id}/file").content

    def lookup_instance(self, sop_instance_uid: str) -> str | None:
        found = [r for r in self._call("POST", "/tools/lookup", content=sop_instance_uid).json()
                 if r.get("Type") == "Instance"]
        return found[0]["ID"] if found else None
