"""The dashboard in a real headless Chromium (Playwright driving the system's /usr/bin/chromium; nothing downloaded):
log in, watch the worklist refresh itself, open a study with a draft, see the overlay, approve it, see the status
change, and open the admin page; screenshots go to test-artifacts/dashboard/; the browser must log no console error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api

from tests.conftest import sqlite_only_database
from tests.integration.api.conftest import api  # noqa: F401  (the running API fixture)
from tests.support.dashboard_study import seed_failed_run, seed_reviewable_study

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def migrated_database_url(tmp_path_factory) -> str:
    """SQLite only: the browser drives the same API on either engine (the API and the review run on both in their own
    tests)."""
    return sqlite_only_database(tmp_path_factory)


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.fail("the system Chromium (/usr/bin/chromium) is not installed: scripts/install installs it")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class ConsoleWatch:
    """Every console error and uncaught page error of a page (a CSP violation or a 404 shows up here too)."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda message: self.errors.append(f"console: {message.text}")
                if message.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))


def log_in(page, base: str, name: str, password: str, next_path: str = "/ui/") -> None:
    page.goto(base + next_path)
    assert "/ui/login" in page.url  # no session yet: the page sent the browser to the log-in form
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(re.compile(re.escape(base + next_path) + r"$"))


@pytest.mark.slow
def test_reviewer_logs_in_opens_a_draft_sees_the_overlay_and_approves_it(api, session_factory, browser):  # noqa: F811
    base, _, dispatcher, app = api
    study_uid = seed_reviewable_study(session_factory, app.state.settings)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    database = session_factory.kw["bind"].dialect.name

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    console = ConsoleWatch(page)

    page.goto(base + "/ui/")
    page.wait_for_selector("#login-form")
    page.screenshot(path=str(ARTIFACTS / f"01-login-{database}.png"))
    log_in(page, base, "rex", "another long secret")
    row = page.locator(f'tr[data-study-uid="{study_uid}"]')
    assert "awaiting review" in row.inner_text() and "Synthetic, Patient" in row.inner_text()  # the default view
    assert page.locator("#draft-notice").is_visible()
    # compact rows: 25 of them fit under the table's top on a 1400 x 900 screen
    top = page.evaluate("() => document.querySelector('#worklist-rows').getBoundingClientRect().top")
    height = page.evaluate(f"() => document.querySelector('tr[data-study-uid=\"{study_uid}\"]')"
                           ".getBoundingClientRect().height")
    assert top + 25 * height <= 900, (top, height)

    page.goto(base + "/ui/?state=all")
    failed_uid = seed_failed_run(session_factory, app.state.settings)  # arrives while the page is open
    page.locator(f'tr[data-study-uid="{failed_uid}"]').wait_for()
    assert "failed in expert" in page.locator(f'tr[data-study-uid="{failed_uid}"]').inner_text()
    assert page.locator("#worklist-total").inner_text() == "2"
    page.screenshot(path=str(ARTIFACTS / f"02-worklist-{database}.png"), full_page=True)
    row = page.locator(f'tr[data-study-uid="{study_uid}"]')

    row.locator("a").click()
    page.wait_for_url(re.compile(re.escape(f"/ui/studies/{study_uid}") + "$"))
    overlay = page.locator("#overlay-image")
    overlay.wait_for()
    assert page.evaluate("() => document.getElementById('overlay-image').naturalWidth") == 96  # decoded PNG
    assert page.locator("#report-status").inner_text() == "draft"
    assert "DRAFT for review by a qualified reader" in page.locator("#report-notice").inner_text()
    assert "hepatic lesion" in page.locator("#narrative").inner_text()
    assert "VISTA3D" in page.locator("#transcript").inner_text()
    assert "liver" in page.locator("#findings").inner_text()
    page.screenshot(path=str(ARTIFACTS / f"03-study-draft-{database}.png"), full_page=True)

    page.keyboard.press("a")  # approve: the confirmation page shows the verified SR first
    page.locator("#review-confirm").wait_for()
    assert "Verification statement" in page.locator("#sr-content").inner_text()
    page.screenshot(path=str(ARTIFACTS / f"04-confirm-approve-{database}.png"), full_page=True)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"\?done=approve$"))
    assert page.locator("#report-status").inner_text() == "approved"
    assert "Approved" in page.locator("#review-message").inner_text()
    assert "Reviewed by rex" in page.locator("#reviewed-by").inner_text()
    assert "approved by rex" in page.locator("#report-notice").inner_text()
    page.screenshot(path=str(ARTIFACTS / f"05-study-approved-{database}.png"), full_page=True)

    page.goto(base + "/ui/?state=verified")
    assert "verified (approved)" in page.locator(f'tr[data-study-uid="{study_uid}"]').inner_text()
    assert page.locator("a[href='/ui/admin']").count() == 0
    assert dispatcher.deliveries  # the verified SR was handed to delivery
    assert console.errors == []
    context.close()


@pytest.mark.slow
def test_admin_sees_node_health_and_throughput_chart(api, session_factory, browser):  # noqa: F811
    base, _, _, app = api
    seed_reviewable_study(session_factory, app.state.settings)
    seed_failed_run(session_factory, app.state.settings)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    console = ConsoleWatch(page)
    log_in(page, base, "ada", "correct horse battery", next_path="/ui/admin")
    assert page.locator("#health tr").count() == 5
    assert page.locator("#throughput svg rect.bar-completed").count() == 1
    assert page.locator("#throughput svg rect.bar-failed").count() == 1
    assert "the expert model ran out of memory" in page.locator("#failures").inner_text()
    assert page.locator("#queues tbody tr td:first-child").all_inner_texts() == [
        "plan", "prepare", "expert", "vlm", "report", "deliver"]
    page.click("#echo-0")
    page.locator("#echo-result").wait_for()
    assert "cannot connect" in page.locator("#echo-result").inner_text()  # nothing listens at the fixture's PACS
    page.screenshot(path=str(ARTIFACTS / f"05-admin-{session_factory.kw['bind'].dialect.name}.png"), full_page=True)
    assert console.errors == []
    context.close()
