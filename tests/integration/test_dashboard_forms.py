"""The dashboard over real HTTP: log-in (cookie flags, CSRF, rate limit, audit), roles, forms, worklist, admin page."""

from __future__ import annotations

import re
import subprocess
from datetime import timedelta

import httpx
import pytest

from dicom_node.network import DicomAddress
from service.api.app import create_app
from service.config import Settings
from service.db.session import session_scope
from service.pipeline.intake import PipelineIntake
from service.pipeline.ledger import PipelineLedger
from service.security import add_user
from service.security.login_limits import LoginThrottle
from tests.conftest import require_tool
from tests.integration.api.conftest import RecordingDispatcher, api  # noqa: F401  (the running API fixture)
from tests.support.api_server import running_app
from tests.support.dashboard_study import seed_failed_run, seed_reviewable_study, seed_skipped_run
from tests.support.dcmtk import dcmtk_env
from tests.support.polling import wait_for
from tests.support.ports import free_port

PASSWORDS = {"ada": "correct horse battery", "rex": "another long secret"}
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]*)"')


def login_form_token(client: httpx.Client) -> str:
    page = client.get("/ui/login")
    assert page.status_code == 200
    return CSRF_FIELD.search(page.text).group(1)


def log_in(client: httpx.Client, name: str, password: str | None = None) -> httpx.Response:
    token = login_form_token(client)
    return client.post("/ui/login", data={"username": name, "password": password or PASSWORDS[name],
                                          "csrf_token": token, "next": "/ui/"})


def page_token(client: httpx.Client, path: str) -> str:
    return CSRF_FIELD.search(client.get(path).text).group(1)


def audit(base: str, tokens: dict, **params) -> list[dict]:
    response = httpx.get(base + "/api/v1/admin/audit", params={"limit": 200, **params},
                         headers={"Authorization": f"Bearer {tokens['admin']}"})
    return response.json()["items"]


def report_version(base: str, tokens: dict, study_uid: str) -> tuple[str, int]:
    data = httpx.get(f"{base}/api/v1/studies/{study_uid}/report",
                     headers={"Authorization": f"Bearer {tokens['admin']}"}).json()
    return data["status"], data["version"]


def test_pages_redirect_a_browser_without_a_session_to_the_login(api):  # noqa: F811
    base, _, _, _ = api
    with httpx.Client(base_url=base) as client:
        for path in ("/ui/", "/ui/admin", "/ui/studies/1.2.3", "/ui/worklist/rows?status=done"):
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/ui/login?next=/ui/"), response.headers["location"]
        forged = client.get("/ui/login", params={"next": "//evil.example/ui/"})
        assert 'name="next" value="/ui/"' in forged.text  # no open redirect after log-in


def dashboard_routes():
    from service.api.ui import ADMIN_ROUTERS, DASHBOARD_ROUTERS

    for router in DASHBOARD_ROUTERS:
        for route in router.routes:
            for method in sorted(route.methods - {"HEAD"}):
                yield method, route.path, router in ADMIN_ROUTERS


def test_every_dashboard_route_needs_a_session_and_admin_pages_the_admin_role(api):  # noqa: F811
    """Enumerated from the dashboard's routers (they are not in the OpenAPI schema), so a new page cannot escape."""
    base, tokens, _, _ = api
    routes = [(m, p, admin) for m, p, admin in dashboard_routes() if p != "/ui/login"]
    assert len(routes) >= 6 and any(admin for _, _, admin in routes)
    with httpx.Client(base_url=base) as anonymous, httpx.Client(base_url=base) as reviewer:
        log_in(reviewer, "rex")
        token = page_token(reviewer, "/ui/")
        for method, path, admin in routes:
            url = path.replace("{study_uid}", "1.2.3").replace("{name}", "ada")
            for headers in ({}, {"Authorization": f"Bearer {tokens['admin']}"}):  # a page takes no API token
                response = anonymous.request(method, url, headers=headers, data={"csrf_token": "x"})
                assert response.status_code == 303, (method, path, response.status_code)
                assert response.headers["location"].startswith("/ui/login"), (method, path)
            if admin:
                refused = reviewer.request(method, url, data={"csrf_token": token, "destination": "0"})
                assert refused.status_code == 403 and "Administrators only" in refused.text, (method, path)


def test_login_sets_an_httponly_samesite_strict_cookie_and_is_audited(api):  # noqa: F811
    base, tokens, _, _ = api
    with httpx.Client(base_url=base) as client:
        response = log_in(client, "rex")
        assert response.status_code == 303 and response.headers["location"] == "/ui/"
        cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("m3edge_session="))
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
        page = client.get("/ui/")
        assert page.status_code == 200 and "AI-generated DRAFTS" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert 'href="/ui/admin"' not in page.text  # a reviewer is not offered the admin page
    events = audit(base, tokens, action="ui.login")
    assert [(e["actor"], e["outcome"], e["remote_addr"]) for e in events] == [("rex", "success", "127.0.0.1")]


def test_the_login_pages_hint_makes_a_user_who_can_log_in(api, database_url, monkeypatch):  # noqa: F811
    """Run the command the login page shows, as shown (the password typed at its prompt), then log in with it."""
    from typer.testing import CliRunner

    from service.cli.main import app as cli

    base, _, _, app = api
    with httpx.Client(base_url=base, timeout=30) as client:
        hint = re.search(r"<code>m3edge (users add NAME [^<]*)</code>", client.get("/ui/login").text).group(1)
        monkeypatch.setenv("M3EDGE_HOME", str(app.state.settings.home))
        monkeypatch.setenv("M3EDGE_DATABASE_URL", database_url)
        secret = "a reviewer's long secret"
        result = CliRunner().invoke(cli, hint.replace("NAME", "rita").split(), input=f"{secret}\n{secret}\n")
        assert result.exit_code == 0, result.output
        response = log_in(client, "rita", secret)
        assert response.status_code == 303 and response.headers["location"] == "/ui/", response.text


def test_login_form_without_its_token_and_wrong_passwords_are_refused_and_audited(api):  # noqa: F811
    base, tokens, _, _ = api
    with httpx.Client(base_url=base) as client:
        client.get("/ui/login")
        no_token = client.post("/ui/login", data={"username": "rex", "password": PASSWORDS["rex"]})
        assert no_token.status_code == 403 and "m3edge_session" not in no_token.headers.get("set-cookie", "")
        wrong = log_in(client, "rex", "not the password")
        assert wrong.status_code == 401 and "Wrong name or password" in wrong.text
        unknown = log_in(client, "nobody", "whatever it is")
        assert unknown.status_code == 401
        assert client.get("/ui/").status_code == 303
    events = audit(base, tokens, action="ui.login")
    assert sorted((e["actor"], e["outcome"]) for e in events) == [("nobody", "failure"), ("rex", "failure")]


def test_failed_logins_lock_the_name_and_then_the_address(api):  # noqa: F811
    base, tokens, _, app = api
    app.state.login_throttle = LoginThrottle(max_failures_per_user=3, max_failures_per_address=5,
                                             window=timedelta(minutes=10))
    with httpx.Client(base_url=base) as client:
        for _ in range(3):
            assert log_in(client, "rex", "guess one two").status_code == 401
        locked = log_in(client, "rex")  # the right password, but the name is locked
        assert locked.status_code == 429, locked.text
        assert 0 < int(locked.headers["retry-after"]) <= 600 and "Too many failed log-ins" in locked.text
        assert "m3edge_session" not in locked.headers.get("set-cookie", "")
    with httpx.Client(base_url=base) as other:  # another name from the same address still gets in
        assert log_in(other, "ada").status_code == 303
    with httpx.Client(base_url=base) as sprayer:
        for name in ("anna", "bob"):
            assert log_in(sprayer, name, "guess one two").status_code == 401
        address_locked = log_in(sprayer, "ada")  # five failures from this address: every name is refused
        assert address_locked.status_code == 429 and "this address" in address_locked.text
    outcomes = [(e["actor"], e["outcome"], e["detail"].get("scope")) for e in audit(base, tokens, action="ui.login")]
    assert ("rex", "locked", "user") in outcomes and ("ada", "locked", "address") in outcomes
    assert sum(1 for _, outcome, _ in outcomes if outcome == "failure") == 5


def test_a_successful_login_starts_the_names_failure_count_afresh(api):  # noqa: F811
    base, _, _, app = api
    app.state.login_throttle = LoginThrottle(max_failures_per_user=3, max_failures_per_address=50)

    def attempt(password: str | None = None) -> int:
        with httpx.Client(base_url=base) as client:
            return log_in(client, "rex", password).status_code

    assert [attempt("guess one two"), attempt("guess one two"), attempt()] == [401, 401, 303]
    # four failures in the window, but only two since the success: the name is not locked
    assert [attempt("guess one two"), attempt("guess one two"), attempt()] == [401, 401, 303]


def test_state_changing_forms_need_the_sessions_csrf_token(api, session_factory):  # noqa: F811
    base, tokens, _, app = api
    study_uid = seed_reviewable_study(session_factory, app.state.settings)
    review_path = f"/ui/studies/{study_uid}/review"
    with httpx.Client(base_url=base) as client:
        assert log_in(client, "rex").status_code == 303
        token = page_token(client, f"/ui/studies/{study_uid}")
        form = {"action": "approve", "version": "1", "narrative": "", "comment": ""}
        assert client.post(review_path, data=form).status_code == 403
        refused = client.post(review_path, data={**form, "csrf_token": token[:-2] + "xx"})
        assert refused.status_code == 403 and "security token" in refused.text
        assert client.post(review_path, json={**form, "csrf_token": token}).status_code == 415
        assert client.post("/ui/logout", data={}).status_code == 403
        assert report_version(base, tokens, study_uid) == ("draft", 1)

        shown = client.post(review_path, data={**form, "csrf_token": token})  # the confirmation step: nothing done
        assert shown.status_code == 200 and 'id="review-confirm"' in shown.text
        assert report_version(base, tokens, study_uid) == ("draft", 1)
        done = client.post(review_path, data={**form, "csrf_token": token, "confirmed": "yes"})
        assert done.status_code == 303 and done.headers["location"].endswith("?done=approve")
        assert report_version(base, tokens, study_uid) == ("approved", 2)
        assert client.post("/ui/logout", data={"csrf_token": token}).status_code == 303
        assert client.get("/ui/").status_code == 303
    denied = [e for e in audit(base, tokens, action="ui.csrf_refused")]
    assert len(denied) == 3 and {e["actor"] for e in denied} == {"rex"}
    assert [e["actor"] for e in audit(base, tokens, action="review.approve")] == ["rex"]


def test_a_second_concurrent_review_gets_a_clear_conflict_message(api, session_factory):  # noqa: F811
    base, tokens, _, app = api
    study_uid = seed_reviewable_study(session_factory, app.state.settings)
    path = f"/ui/studies/{study_uid}"
    with httpx.Client(base_url=base) as rex, httpx.Client(base_url=base) as ada:
        log_in(rex, "rex")
        log_in(ada, "ada")
        rex_token, ada_token = page_token(rex, path), page_token(ada, path)  # both read version 1
        first = rex.post(path + "/review", data={"action": "approve", "version": "1", "csrf_token": rex_token,
                                                 "confirmed": "yes"})
        assert first.status_code == 303
        second = ada.post(path + "/review", data={"action": "amend", "version": "1", "narrative": "My own words.",
                                                  "csrf_token": ada_token, "confirmed": "yes"})
        assert second.status_code == 409
        assert "someone else reviewed this report" in second.text
        assert "My own words." in second.text  # the reader's text is kept for another try
    assert report_version(base, tokens, study_uid) == ("approved", 2)


def test_reject_needs_a_reason_and_then_ends_the_review(api, session_factory):  # noqa: F811
    base, tokens, _, app = api
    study_uid = seed_reviewable_study(session_factory, app.state.settings)
    path = f"/ui/studies/{study_uid}"
    with httpx.Client(base_url=base) as client:
        log_in(client, "rex")
        token = page_token(client, path)
        unexplained = client.post(path + "/review", data={"action": "reject", "version": "1", "csrf_token": token})
        assert unexplained.status_code == 422 and "reject needs a reason" in unexplained.text
        rejected = client.post(path + "/review", data={"action": "reject", "version": "1", "csrf_token": token,
                                                      "comment": "Wrong series segmented.", "confirmed": "yes"},
                              follow_redirects=True)
        assert rejected.status_code == 200 and 'id="review-form"' not in rejected.text
        assert "Wrong series segmented." in rejected.text
    assert report_version(base, tokens, study_uid) == ("rejected", 2)


def test_reviewer_cannot_open_the_admin_page(api):  # noqa: F811
    base, tokens, _, _ = api
    with httpx.Client(base_url=base) as client:
        log_in(client, "rex")
        page = client.get("/ui/admin")
        assert page.status_code == 403 and "Administrators only" in page.text
        token = page_token(client, "/ui/")
        assert client.post("/ui/admin/echo", data={"destination": "0", "csrf_token": token}).status_code == 403
    denied = audit(base, tokens, action="access.denied")
    assert {e["target"] for e in denied} == {"/ui/admin", "/ui/admin/echo"}


def test_worklist_shows_states_errors_and_filters(api, session_factory):  # noqa: F811
    base, _, _, app = api
    done_uid = seed_reviewable_study(session_factory, app.state.settings)
    failed_uid = seed_failed_run(session_factory, app.state.settings)
    skipped_uid = seed_skipped_run(session_factory, app.state.settings,
                                   "no rule's anatomy matched (BodyPartExamined KNEE)")
    with httpx.Client(base_url=base) as client:
        log_in(client, "rex")
        page = client.get("/ui/", params={"state": "all"}).text
        assert done_uid in page and failed_uid in page
        assert "awaiting review" in page and "failed in expert" in page  # the state of each run in words
        only_mr = client.get("/ui/", params={"state": "all", "modality": "mr"}).text
        assert failed_uid in only_mr and done_uid not in only_mr
        bad = client.get("/ui/", params={"date_from": "31/01/2026"}).text
        assert "Filter not applied" in bad and done_uid in bad
        rows = client.get("/ui/worklist/rows", params={"state": "failed"})
        assert rows.headers["x-total-count"] == "1" and failed_uid in rows.text and done_uid not in rows.text
        skipped = client.get("/ui/studies/" + skipped_uid).text  # a skipped run says why, not "Failed in : ..."
        assert "Skipped: no rule&#39;s anatomy matched (BodyPartExamined KNEE)" in skipped and "Failed in" not in skipped


@pytest.fixture
def dicom_peer(tmp_path):
    """dcmtk storescp answering C-ECHO on a free port: it plays both our own SCP and a destination."""
    port = free_port()
    (tmp_path / "received").mkdir()
    process = subprocess.Popen([require_tool("storescp"), "--aetitle", "M3EDGE", "-od", str(tmp_path / "received"),
                                str(port)], env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _accepts(port), timeout=20, message="storescp did not start")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_admin_page_shows_health_queues_throughput_failures_and_echoes_destinations(database_url, session_factory,
                                                                                   tmp_path, dicom_peer):
    closed = free_port()
    settings = Settings(home=tmp_path / "home", database_url=database_url, dicom_port=dicom_peer,
                        destinations=f"PACS@127.0.0.1:{dicom_peer},DOWN@127.0.0.1:{closed}")
    settings.spool_dir.mkdir(parents=True)
    ledger = PipelineLedger(session_factory)
    app = create_app(settings, session_factory, PipelineIntake(ledger, RecordingDispatcher(ledger)))
    with session_scope(session_factory) as session:
        add_user(session, "ada", "admin", display_name="Ada Admin", password=PASSWORDS["ada"])
    seed_reviewable_study(session_factory, settings)
    failed_uid = seed_failed_run(session_factory, app.state.settings)
    with running_app(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        log_in(client, "ada")
        page = client.get("/ui/admin")
        assert page.status_code == 200
        states = {name: state for state, name in re.findall(r'<tr class="health-(\w+)"><th>([^<]+)</th>', page.text)}
        assert states["DICOM SCP"] == "ok" and states["Database"] == "ok" and states["Spool disk"] == "ok"
        assert states["Broker"] == "ok" and states["GPU"] in {"ok", "none"}
        assert "C-ECHO answered" in page.text
        assert len(re.findall(r'<rect class="bar-completed"', page.text)) == 1
        assert len(re.findall(r'<rect class="bar-failed"', page.text)) == 1
        assert failed_uid in page.text and "worker-1@edge" in page.text
        token = CSRF_FIELD.search(page.text).group(1)
        good = client.post("/ui/admin/echo", data={"destination": "0", "csrf_token": token})
        assert good.status_code == 200
        assert re.search(r'id="echo-result">C-ECHO PACS@[^:]+:\d+: C-ECHO answered', good.text)
        down = client.post("/ui/admin/echo", data={"destination": "1", "csrf_token": token})
        assert "cannot connect to DOWN@" in down.text
        assert client.post("/ui/admin/echo", data={"destination": "7", "csrf_token": token}).status_code == 400
    with session_scope(session_factory) as session:
        from sqlalchemy import select

        from service.db.models import AuditEvent

        echoes = session.execute(select(AuditEvent.target, AuditEvent.outcome)
                                 .where(AuditEvent.action == "admin.destination.echo").order_by(AuditEvent.id)).all()
    assert [outcome for _, outcome in echoes] == ["success", "failure"]
    assert DicomAddress.parse(echoes[0][0]).port == dicom_peer


def test_a_demo_draft_can_only_be_rejected_in_the_api_and_on_the_page(api, session_factory):  # noqa: F811
    base, tokens, _, app = api
    study_uid = seed_reviewable_study(session_factory, app.state.settings, demo=True)
    reviewer = {"Authorization": f"Bearer {tokens['reviewer']}"}
    review = f"{base}/api/v1/studies/{study_uid}/review"
    for body in ({"action": "approve", "version": 1}, {"action": "amend", "version": 1, "narrative": "Fine."}):
        refused = httpx.post(review, json=body, headers=reviewer)
        assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert problem["title"] == "a DEMO draft cannot be verified"
        assert "DEMO models (random weights)" in problem["detail"] and "reprocess" in problem["detail"]
    report = httpx.get(f"{base}/api/v1/studies/{study_uid}/report", headers=reviewer).json()
    assert (report["status"], report["version"], report["verifiable"]) == ("draft", 1, False)
    assert "verified" not in report["objects"]
    path = f"/ui/studies/{study_uid}"
    with httpx.Client(base_url=base) as client:
        log_in(client, "rex")
        page = client.get(path)
        assert 'id="demo-not-verifiable"' in page.text and "can never be approved or amended" in page.text
        assert 'id="approve"' not in page.text and 'id="amend"' not in page.text and 'id="reject"' in page.text
        token = page_token(client, path)
        forged = client.post(path + "/review", data={"action": "approve", "version": "1", "csrf_token": token})
        assert forged.status_code == 409 and "can never be approved or amended" in forged.text
        rejected = client.post(path + "/review", data={"action": "reject", "version": "1", "comment": "Random weights.",
                                                      "csrf_token": token, "confirmed": "yes"})
        assert rejected.status_code == 303
    assert report_version(base, tokens, study_uid) == ("rejected", 2)
