"""Files under HOME hold patient data and secrets: ``m3edge serve`` started under umask 000 (the loosest an operator
could have) still creates every file 0640 at most (the database and ``session.key`` 0600) and every folder 0750, and
``m3edge doctor`` warns about a file made looser by hand. Before: ``m3edge.db`` and ``broker.db`` were 0644 and the
spool's folders 0755 under the common umask 022, and everything world-writable under 000."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess

import httpx
import pytest

from service.config import Settings
from service.home_files import loose_entries
from tests.conftest import require_tool
from tests.support.api_process import CLI, CSRF_FIELD, log_in, running_api
from tests.support.dicom_corpus import write_ct_series
from tests.support.ports import free_port

pytestmark = pytest.mark.slow  # real m3edge processes started for these tests


def modes_under(home):
    for path in [home, *home.rglob("*")]:
        if not path.is_symlink():
            yield path, stat.S_IMODE(path.stat().st_mode), path.is_dir()


def test_serve_under_umask_000_keeps_home_private_and_doctor_warns_about_loose_modes(tmp_path):
    storescu = require_tool("storescu")
    dicom_port = free_port()
    series = write_ct_series(tmp_path / "study", 2, rows=32, columns=32)
    with contextlib.ExitStack() as stack:
        previous = os.umask(0)
        try:
            api = stack.enter_context(running_api(tmp_path, command="serve", dicom_port=str(dicom_port),
                                                  dicom_host="127.0.0.1", dicom_receivers="2",
                                                  study_idle_seconds="1", study_release_grace_seconds="0.5"))
        finally:
            os.umask(previous)
        sent = subprocess.run([storescu, "-aec", "M3EDGE", "-aet", "MODALITY", "127.0.0.1", str(dicom_port),
                               *map(str, series.paths)], capture_output=True, text=True, env=api.env, timeout=60)
        assert sent.returncode == 0, sent.stderr
        admin = api.bearer("ada")
        rules = httpx.get(api.base_url + "/api/v1/admin/routing-rules", headers=admin).json()["yaml"]
        assert httpx.put(api.base_url + "/api/v1/admin/routing-rules", json={"yaml": rules},
                         headers=admin).status_code == 200
        assert httpx.put(api.base_url + "/api/v1/admin/destinations", json={"destinations": ["PACS@127.0.0.1:104"]},
                         headers=admin).status_code == 200
        with httpx.Client(base_url=api.base_url) as browser:
            assert log_in(browser, "rex").status_code == 303
            token = CSRF_FIELD.search(browser.get("/ui/").text).group(1)
            browser.post("/ui/logout", data={"csrf_token": token})
    home = tmp_path / "home"  # (work/ and results/ are written with the same helpers: tests/unit)
    names = {path.name for path, _, _ in modes_under(home)}
    assert {"m3edge.db", "broker.db", "session.key", "destinations.yaml", "routing_rules.yaml", "spool",
            series.study_uid} <= names, sorted(names)
    assert len(list((home / "spool").rglob("*.dcm"))) == 2
    loose = [(str(path.relative_to(home)), f"{mode:04o}") for path, mode, is_dir in modes_under(home)
             if mode & ~(0o750 if is_dir else 0o640)]
    assert loose == []
    for secret in ("m3edge.db", "broker.db", "session.key"):
        assert stat.S_IMODE((home / secret).stat().st_mode) == 0o600, secret

    assert loose_entries(Settings(home=home)) == []  # what doctor's file-modes check reads
    (home / "m3edge.db").chmod(0o644)
    warning = file_modes_line(api.env)
    assert warning.startswith("warn") and f"{home / 'm3edge.db'} 0644" in warning, warning


def file_modes_line(env) -> str:
    """``m3edge doctor``'s file-modes line (its exit status is about other checks: the destination is down)."""
    doctor = subprocess.run([*CLI, "doctor"], env=env, capture_output=True, text=True, timeout=120)
    return next(line for line in doctor.stdout.splitlines() if "file modes" in line)
