"""A reviewer at work, in the system's Chromium (Playwright): log in, find the study in the worklist, open it in the
OHIF Viewer that m3edge serves at /viewer/ and check that the viewer *rendered* the CT and the draft's SEG (pixels of
the viewport canvas, the segmentation panel's segments), not only that it loaded; back on the study page amend the
draft; the verified SR, delivered by the same queue an io worker runs, arrives in a real Orthanc carrying the amendment.

Every dashboard page is checked with axe-core (vendor/axe-core, installed by ``scripts/install --test``): no
violation of impact serious or critical. Screenshots at 1400 x 900 go to tests/screenshots/ (ignored by git).

The viewer needs OHIF installed (``scripts/install-viewer``); without it these tests fail and say so.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright import sync_api as playwright_api
from pydicom import dcmread

from dicom_node.scu import RetryPolicy, StorageSCU
from service.api.app import create_app
from service.api.viewer import DEFAULT_VIEWER_DIR, VIEWER_CSP
from service.config import Settings
from service.db.models import Report
from service.db.session import session_scope
from service.pipeline.delivery import DeliveryQueue
from service.pipeline.intake import PipelineIntake
from service.pipeline.ledger import PipelineLedger
from service.security import add_user
from tests.integration.api.conftest import RecordingDispatcher, api  # noqa: F401  (the running API fixture)
from tests.integration.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, log_in
from tests.conftest import sqlite_only_database
from tests.support.api_server import running_app
from tests.support.dashboard_study import seed_failed_run, seed_reviewable_study
from tests.support.orthanc import OrthancServer
from tests.support.polling import wait_for

REPOSITORY = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPOSITORY / "tests" / "screenshots"
AXE = REPOSITORY / "vendor" / "axe-core" / "axe.min.js"
VIEWPORT = {"width": 1400, "height": 900}
TIMEOUT_MS = 30_000
AMENDMENT = "Amended by the reader: the hepatic lesion measures 14 mm."

# Counts, in the viewport's 2D canvas, the grey pixels (the CT) and the saturated ones (only the SEG's colours: the
# CT is greyscale). Cornerstone draws each viewport into a 2D canvas, so its pixels can be read back.
CANVAS_PIXELS = """() => {
  const canvas = document.querySelector('canvas.cornerstone-canvas');
  if (!canvas || !canvas.width) return null;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let grey = 0, coloured = 0;
  for (let i = 0; i < data.length; i += 4) {
    const high = Math.max(data[i], data[i + 1], data[i + 2]), low = Math.min(data[i], data[i + 1], data[i + 2]);
    if (high - low > 60) coloured++; else if (high > 20) grey++;
  }
  return {grey, coloured, total: canvas.width * canvas.height};
}"""


def _require_viewer() -> None:
    if not (DEFAULT_VIEWER_DIR / "index.html").is_file():
        pytest.fail("the OHIF Viewer is not installed: run scripts/install-viewer (scripts/install --test runs it)")
    if not AXE.is_file():
        pytest.fail("axe-core is not installed: run scripts/install-viewer --test (scripts/install --test runs it)")
    if not CHROMIUM.exists():
        pytest.fail("the system Chromium (/usr/bin/chromium) is not installed: scripts/test installs it")



@pytest.fixture(scope="module")
def migrated_database_url(tmp_path_factory) -> str:
    """SQLite only: the browser drives the same API on either engine (the API, the recorder and the review run on
    both in their own tests)."""
    return sqlite_only_database(tmp_path_factory)


@pytest.fixture
def browser():
    _require_viewer()
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def orthanc(tmp_path):
    with OrthancServer(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture
def api_to_orthanc(database_url, session_factory, tmp_path, orthanc):
    """A running API whose destination is a real Orthanc; yields (base_url, dispatcher, app)."""
    settings = Settings(home=tmp_path / "home", database_url=database_url,
                        destinations=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    settings.spool_dir.mkdir(parents=True)
    ledger = PipelineLedger(session_factory)
    dispatcher = RecordingDispatcher(ledger)
    app = create_app(settings, session_factory, PipelineIntake(ledger, dispatcher))
    with session_scope(session_factory) as session:
        add_user(session, "rex", "reviewer", display_name="Dr Rex Reviewer", organisation="General Hospital",
                 password="another long secret")
    with running_app(app) as base:
        yield base, dispatcher, app


class PageWatch:
    """What a page did: console errors, CSP violations, failed DICOMweb answers."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        self.csp: list[str] = []
        self.dicomweb: list[str] = []
        self.failed: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("response", self._response)

    def _console(self, message) -> None:
        if "Content Security Policy" in message.text:
            self.csp.append(message.text[:300])
        if message.type == "error":
            self.errors.append(message.text[:300])

    def _response(self, response) -> None:
        if "/dicomweb/" in response.url:
            self.dicomweb.append(f"{response.request.method} {response.url.split('/dicomweb', 1)[1]}")
            if response.status >= 400:
                self.failed.append(f"{response.status} {response.url}")


def axe_violations(page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now (injected through Playwright's evaluate,
    which the page's CSP does not govern; the page itself loads nothing new)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text(encoding="utf-8") + "\n;undefined")
    result = page.evaluate("""async () => {
      const r = await axe.run(document, {resultTypes: ['violations']});
      return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
        .map(v => v.impact + ' ' + v.id + ': ' + v.help + ' @ '
             + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', '));
    }""")
    return list(result)


def _screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def _wait_for_render(page) -> dict:
    """The viewport's pixel counts once the CT and the SEG both show (polled; the CPU renderer is slow here)."""
    found: dict = {}

    def rendered() -> bool:
        found.update(page.evaluate(CANVAS_PIXELS) or {})
        return found.get("grey", 0) > 10_000 and found.get("coloured", 0) > 500

    try:
        wait_for(rendered, timeout=60, interval=0.5)
    except TimeoutError:
        raise AssertionError(f"the viewer did not render the CT and the SEG within 60 s: {found}") from None
    return found


@pytest.mark.slow
def test_reviewer_finds_the_study_sees_ct_and_seg_in_the_viewer_amends_and_orthanc_gets_the_amendment(
        api_to_orthanc, session_factory, browser, orthanc):
    base, dispatcher, app = api_to_orthanc
    study_uid = seed_reviewable_study(session_factory, app.state.settings)
    seg = dcmread(app.state.settings.results_dir / study_uid / "run-1" / "seg.dcm", stop_before_pixels=True)
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    watch = PageWatch(page)

    log_in(page, base, "rex", "another long secret")
    row = page.locator(f'tr[data-study-uid="{study_uid}"]')
    row.wait_for()
    _screenshot(page, "worklist.png")
    row.locator("a").first.click()
    page.wait_for_url(re.compile(re.escape(f"/ui/studies/{study_uid}") + "$"))
    _screenshot(page, "study.png")
    link = page.locator("#viewer-links a").first
    assert "segmentation overlaid" in link.inner_text()
    assert f"initialSeriesInstanceUID={seg.SeriesInstanceUID}" in link.get_attribute("href")

    link.click()
    page.wait_for_url(re.compile(r"/viewer/viewer\?StudyInstanceUIDs="))
    page.locator("canvas.cornerstone-canvas").wait_for()
    pixels = _wait_for_render(page)
    assert pixels["coloured"] < pixels["total"] / 2  # an overlay on the CT, not a coloured screen
    page.get_by_text("AI DRAFT report, not verified").wait_for()  # the draft SR is in the study browser
    page.get_by_text("AI DRAFT VISTA3D segmentation").wait_for()
    page.locator('[data-cy="panelSegmentation-btn"]').click()
    panel = page.locator("body")
    for segment in ("liver", "hepatic tumor", "right kidney", "left kidney"):
        page.get_by_text(re.compile(rf"^{segment}$", re.IGNORECASE)).first.wait_for()
    _screenshot(page, "viewer.png")
    assert "hepatic tumor" in panel.inner_text().lower()
    assert watch.csp == [], watch.csp  # VIEWER_CSP is enough for OHIF's CT and SEG
    assert watch.failed == [], watch.failed
    assert any("/metadata" in r for r in watch.dicomweb) and any("/frames/" in r for r in watch.dicomweb)

    page.goto(f"{base}/ui/studies/{study_uid}")
    page.fill("#review-form textarea[name=narrative]", AMENDMENT)
    page.click("#amend")
    page.wait_for_url(re.compile(r"\?done=amend$"))
    assert page.locator("#report-status").inner_text() == "amended"
    with session_scope(session_factory) as session:
        run_id = session.query(Report).one().run_id
    assert run_id in dispatcher.deliveries  # the review asked an io worker to deliver ...
    outcome = DeliveryQueue(session_factory, StorageSCU("M3EDGE", retry=RetryPolicy(attempts=2),
                                                        connection_timeout=5)).send_pending(run_id)
    assert outcome.complete and outcome.delivered == 1  # ... which is what this does
    with session_scope(session_factory) as session:
        verified = (session.query(Report).one().objects or {}).get("verified") or {}
    orthanc_id = orthanc.lookup_instance(verified["sop_instance_uid"])
    assert orthanc_id is not None
    sr_text = orthanc.instance_file(orthanc_id)
    assert AMENDMENT.encode() in sr_text
    assert b"VERIFIED" in sr_text
    context.close()


@pytest.mark.slow
def test_every_dashboard_page_passes_axe_and_the_viewer_page_keeps_its_csp(api, session_factory, browser):  # noqa: F811
    base, _, _, app = api
    study_uid = seed_reviewable_study(session_factory, app.state.settings)
    seed_failed_run(session_factory, app.state.settings)
    found: dict[str, list[str]] = {}
    for user, password, pages in (
        ("rex", "another long secret", ["/ui/", f"/ui/studies/{study_uid}", "/ui/admin"]),
        ("ada", "correct horse battery", ["/ui/admin", "/ui/admin/users"]),
    ):
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.goto(base + "/ui/login")
        found["/ui/login"] = axe_violations(page)
        log_in(page, base, user, password)
        for path in pages:
            page.goto(base + path)
            found[f"{path} ({user})"] = axe_violations(page)  # the reviewer's /ui/admin is the 403 error page
        context.close()
    assert {page: v for page, v in found.items() if v} == {}
    answer = httpx.get(f"{base}/viewer/", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login?next=/viewer/")
    assert httpx.get(f"{base}/viewer/m3edge-boot.js").headers["content-security-policy"] == VIEWER_CSP

