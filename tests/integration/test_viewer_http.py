"""The OHIF Viewer at /viewer/ over HTTP: who may open it, the generated app-config.js (this site's DICOMweb, no
token), its Content-Security-Policy, a clear 503 when it is not installed, the session cookie reading DICOMweb (GET
only: a store needs the CSRF header), and the study page's "open in viewer" links (VIEWER_URL_TEMPLATE)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from service.api.app import create_app
from service.api.viewer import DEFAULT_VIEWER_DIR, INSTALL_HINT, VIEWER_CSP
from service.config import Settings
from service.pipeline.intake import PipelineIntake
from service.pipeline.ledger import PipelineLedger
from tests.integration.api.conftest import RecordingDispatcher, api  # noqa: F401  (the running API fixture)
from tests.integration.test_dashboard_forms import log_in
from tests.conftest import sqlite_only_database
from tests.support.api_server import running_app
from tests.support.dashboard_study import seed_reviewable_study

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
def installed_viewer() -> None:
    """scripts/install --test (which scripts/test runs) installs OHIF; without it these tests fail and say so."""
    if not (DEFAULT_VIEWER_DIR / "index.html").is_file():
        pytest.fail("the OHIF Viewer is not installed: run scripts/install-viewer (scripts/install --test runs it)")



@pytest.fixture(scope="module")
def migrated_database_url(tmp_path_factory) -> str:
    """Access rules and configuration, the same on either engine: SQLite only."""
    return sqlite_only_database(tmp_path_factory)


def test_the_viewer_needs_a_session_and_reads_only_this_sites_dicomweb(api, installed_viewer):  # noqa: F811
    base, _, _, _ = api
    anonymous = httpx.get(f"{base}/viewer/viewer?StudyInstanceUIDs=1.2.3")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/ui/login?next=/viewer/viewer%3FStudyInstanceUIDs%3D1.2.3"
    assert httpx.get(f"{base}/viewer/app-config.js").status_code == 303
    with httpx.Client(base_url=base) as browser:
        assert log_in(browser, "rex").status_code == 303
        page = browser.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")
        assert page.status_code == 200 and page.headers["content-security-policy"] == VIEWER_CSP
        assert "frame-ancestors 'none'" in VIEWER_CSP and "'unsafe-inline'" not in VIEWER_CSP.split("style-src")[0]
        assert re.search(r"<script>", page.text) is None  # no inline script: the CSP needs no 'unsafe-inline'
        assert '<script src="/viewer/m3edge-boot.js">' in page.text
        config = browser.get("/viewer/app-config.js")
        assert config.headers["cache-control"] == "no-store"
        assert "origin + '/dicomweb'" in config.text and "m3e_" not in config.text and "http" not in config.text
        settings = json.loads(config.text.split("var config = ", 1)[1].split(";\n", 1)[0])
        assert [s["sourceName"] for s in settings["dataSources"]] == ["m3edge"]
        assert settings["routerBasename"] == "/viewer"
        bundle = browser.get("/viewer/" + next(DEFAULT_VIEWER_DIR.glob("app.bundle.*.js")).name)
        assert bundle.status_code == 200 and '__webpack_require__.p = "/viewer/"' in bundle.text
        assert browser.get("/viewer/..%2F..%2Fpyproject.toml").status_code == 404  # never leaves its folder
        assert browser.get("/viewer/nope.js").status_code == 404

        studies = browser.get("/dicomweb/studies")  # the session cookie reads DICOMweb ...
        assert studies.status_code == 200
        stored = browser.post("/dicomweb/studies", content=b"--x--",
                              headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'})
        assert stored.status_code == 403 and "CSRF" in stored.json()["title"]  # ... but stores nothing without CSRF


def test_without_the_viewer_installed_it_answers_503_and_says_how(database_url, session_factory, tmp_path):
    settings = Settings(home=tmp_path / "home", database_url=database_url, viewer_dir=tmp_path / "no-viewer")
    ledger = PipelineLedger(session_factory)
    app = create_app(settings, session_factory, PipelineIntake(ledger, RecordingDispatcher(ledger)))
    with running_app(app) as base:
        answer = httpx.get(f"{base}/viewer/viewer?StudyInstanceUIDs=1.2.3")
        assert answer.status_code == 503 and "scripts/install-viewer" in answer.text
        assert httpx.get(f"{base}/healthz").status_code == 200  # the rest of m3edge runs
    assert "scripts/install-viewer" in INSTALL_HINT


def test_the_study_page_links_to_the_viewer_with_the_seg_and_to_the_sites_viewer(database_url, session_factory,
                                                                                  tmp_path, installed_viewer):
    from service.db.session import session_scope
    from service.security import add_user

    settings = Settings(home=tmp_path / "home", database_url=database_url,
                        viewer_url_template="https://pacs.example/view?study={study_uid}&series={series_uid}")
    settings.spool_dir.mkdir(parents=True)
    ledger = PipelineLedger(session_factory)
    app = create_app(settings, session_factory, PipelineIntake(ledger, RecordingDispatcher(ledger)))
    with session_scope(session_factory) as session:
        add_user(session, "rex", "reviewer", password="another long secret")
    study_uid = seed_reviewable_study(session_factory, settings)
    with running_app(app) as base, httpx.Client(base_url=base) as browser:
        log_in(browser, "rex")
        page = browser.get(f"/ui/studies/{study_uid}").text
    links = re.findall(r'<a class="button" href="([^"]+)"', page.split('id="viewer-links"', 1)[1].split("</p>")[0])
    assert links[0].startswith(f"/viewer/viewer?StudyInstanceUIDs={study_uid}&amp;initialSeriesInstanceUID=")
    assert links[1].startswith(f"https://pacs.example/view?study={study_uid}&amp;series=1.")
    assert 'rel="noopener noreferrer"' in page


def test_viewer_url_template_is_checked():
    assert Settings(viewer_url_template="/other/viewer?s={study_uid}").viewer_url_template
    for bad in ("https://pacs.example/view", "javascript:alert(1)//{study_uid}", "//evil.example/{study_uid}",
                "https://pacs.example/{patient_id}?{study_uid}"):
        with pytest.raises(ValidationError, match="VIEWER_URL_TEMPLATE"):
            Settings(viewer_url_template=bad)


def test_install_viewer_refuses_a_tarball_whose_integrity_is_not_the_pinned_one(tmp_path):
    import tarfile

    tarball = tmp_path / "ohif-app-3.13.2.tgz"
    (tmp_path / "package" / "dist").mkdir(parents=True)
    (tmp_path / "package" / "dist" / "index.html").write_text("<script>alert(1)</script>")
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tmp_path / "package", arcname="package")
    done = subprocess.run([sys.executable, str(REPOSITORY / "scripts" / "install-viewer"), "--into",
                           str(tmp_path / "vendor")], env={"M3EDGE_VIEWER_TARBALL": str(tarball), "PATH": ""},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "is not the pinned" in done.stderr and "refusing it" in done.stderr
    assert not (tmp_path / "vendor" / "ohif").exists()
