"""Dashboard sessions and accounts against a real ``m3edge api``: a session is the database's, not the cookie's.

A copied cookie stops working at log-out, when its user is disabled (with ``m3edge users disable`` in another process,
or the admin API, or the dashboard's users page) and when its password changes; disabling also ends every API token.
Before: log-out only deleted the browser's cookie (a copy worked for 8 hours), and a revoked user still logged in and
read ``/api/v1/studies`` and ``/dicomweb/studies`` with a live cookie."""

from __future__ import annotations

import itertools

import httpx
import pytest

from tests.support.api_process import CSRF_FIELD, PASSWORDS, log_in, run_cli, running_api
from tests.support.polling import wait_for

pytestmark = pytest.mark.slow  # real m3edge processes started for these tests

READS = ("/api/v1/studies", "/dicomweb/studies")
PASSWORD = PASSWORDS["rex"]
_NUMBERS = itertools.count(1)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with running_api(tmp_path_factory.mktemp("sessions")) as api:
        yield api


@pytest.fixture
def rex(api) -> str:
    """A reviewer of this test's own (made through the admin API), with a password and an API token."""
    name = f"reviewer{next(_NUMBERS)}"
    created = httpx.post(api.base_url + "/api/v1/admin/users", headers=api.bearer("ada"),
                         json={"name": name, "role": "reviewer", "password": PASSWORD})
    assert created.status_code == 201, created.text
    api.tokens[name] = created.json()["token"]
    return name


def logged_in_cookie(api, name: str, password: str | None = None) -> dict[str, str]:
    with httpx.Client(base_url=api.base_url) as browser:
        assert log_in(browser, name, password or PASSWORD).status_code == 303
        return {"Cookie": f"m3edge_session={browser.cookies['m3edge_session']}"}


def session_works(api, cookie: dict[str, str]) -> bool:
    """Whether the cookie opens a page and reads the API and DICOMweb (all or nothing)."""
    page = httpx.get(api.base_url + "/ui/", headers=cookie)
    reads = [httpx.get(api.base_url + path, headers=cookie).status_code for path in READS]
    works = page.status_code == 200
    assert reads == ([200, 200] if works else [401, 401]), (page.status_code, reads)
    return works


def test_a_copied_cookie_stops_working_at_logout(api, rex):
    with httpx.Client(base_url=api.base_url) as browser:
        assert log_in(browser, rex, PASSWORD).status_code == 303
        copy = {"Cookie": f"m3edge_session={browser.cookies['m3edge_session']}"}
        assert session_works(api, copy)
        token = CSRF_FIELD.search(browser.get("/ui/").text).group(1)
        assert browser.post("/ui/logout", data={"csrf_token": token}).status_code == 303
    assert not session_works(api, copy)


def test_users_disable_ends_every_token_and_session_at_once_and_enable_needs_a_new_login(api, rex):
    cookie = logged_in_cookie(api, rex)
    assert httpx.get(api.base_url + "/api/v1/studies", headers=api.bearer(rex)).status_code == 200
    result = run_cli(api.env, "users", "disable", rex)
    assert "1 token(s) revoked, 1 session(s) ended" in result.stdout
    assert not session_works(api, cookie)
    for path in READS:
        assert httpx.get(api.base_url + path, headers=api.bearer(rex)).status_code == 401
    with httpx.Client(base_url=api.base_url) as browser:
        assert log_in(browser, rex, PASSWORD).status_code == 401
    run_cli(api.env, "users", "enable", rex)
    assert not session_works(api, cookie)  # nothing comes back ...
    assert httpx.get(api.base_url + "/api/v1/studies", headers=api.bearer(rex)).status_code == 401
    assert session_works(api, logged_in_cookie(api, rex))  # ... but the user logs in again
    actions = [(e["actor"], e["action"], e["target"]) for e in api.audit(actor="cli")]
    assert ("cli", "admin.user.disable", rex) in actions and ("cli", "admin.user.enable", rex) in actions


def test_a_password_change_ends_the_users_sessions(api, rex):
    cookie = logged_in_cookie(api, rex)
    new = "a brand new passphrase"
    result = run_cli(api.env, "users", "password", rex, input=f"{new}\n{new}\n")
    assert "1 session(s) ended" in result.stdout
    assert not session_works(api, cookie)
    with httpx.Client(base_url=api.base_url) as browser:
        assert log_in(browser, rex, PASSWORD).status_code == 401
    assert session_works(api, logged_in_cookie(api, rex, new))
    assert httpx.get(api.base_url + "/api/v1/studies", headers=api.bearer(rex)).status_code == 200  # tokens stay


def test_the_admin_api_disables_enables_and_sets_passwords_audited(api, rex):
    cookie = logged_in_cookie(api, rex)
    url = api.base_url + f"/api/v1/admin/users/{rex}"
    disabled = httpx.post(url + "/disable", headers=api.bearer("ada"))
    assert disabled.status_code == 200 and disabled.json() == {"name": rex, "disabled": True, "tokens_revoked": 1,
                                                              "sessions_ended": 1}
    assert not session_works(api, cookie)
    assert httpx.post(api.base_url + "/api/v1/admin/users/ada/disable", headers=api.bearer("ada")).status_code == 409
    assert httpx.post(url + "/enable", headers=api.bearer("ada")).status_code == 200
    cookie = logged_in_cookie(api, rex)
    short = httpx.put(url + "/password", json={"password": "short"}, headers=api.bearer("ada"))
    assert short.status_code == 422 and session_works(api, cookie)
    changed = httpx.put(url + "/password", json={"password": "set by the admin"}, headers=api.bearer("ada"))
    assert changed.status_code == 200 and changed.json()["sessions_ended"] == 1
    assert not session_works(api, cookie)
    users = {u["name"]: u for u in httpx.get(api.base_url + "/api/v1/admin/users", headers=api.bearer("ada")).json()}
    assert users[rex]["disabled"] is False and users[rex]["sessions"] == 0 and users[rex]["active_tokens"] == 0
    actions = [e["action"] for e in api.audit(actor="ada") if e["target"] == rex]
    assert {"admin.user.disable", "admin.user.enable", "admin.user.password"} <= set(actions)


def test_the_dashboards_users_page_disables_a_user(api, rex):
    victim = logged_in_cookie(api, rex)
    with httpx.Client(base_url=api.base_url) as admin:
        assert log_in(admin, "ada").status_code == 303
        page = admin.get("/ui/admin/users")
        assert page.status_code == 200 and f'id="user-{rex}"' in page.text
        token = CSRF_FIELD.search(page.text).group(1)
        assert admin.post(f"/ui/admin/users/{rex}/disable", data={}).status_code == 403  # CSRF
        done = admin.post(f"/ui/admin/users/{rex}/disable", data={"csrf_token": token})
        assert done.status_code == 200 and f"{rex} is disabled" in done.text
        assert not session_works(api, victim)
        mismatch = admin.post(f"/ui/admin/users/{rex}/password", data={"csrf_token": token, "password": "0123456789",
                                                                     "confirm": "9876543210"})
        assert mismatch.status_code == 400
    with httpx.Client(base_url=api.base_url) as reviewer:
        assert log_in(reviewer, rex, PASSWORD).status_code == 401  # disabled


def test_a_session_ends_at_session_lifetime_seconds_however_busy(tmp_path):
    """The idle timeout is tested with a clock in tests/unit/service/test_dashboard_sessions.py; here the lifetime is
    set through the environment of a real process and the session is used all the time until it ends."""
    with running_api(tmp_path, session_lifetime_seconds="3") as api:
        cookie = logged_in_cookie(api, "rex")
        assert session_works(api, cookie)
        wait_for(lambda: httpx.get(api.base_url + "/ui/", headers=cookie).status_code == 303, timeout=30,
                 interval=0.2, message="the session outlived SESSION_LIFETIME_SECONDS")
        assert not session_works(api, cookie)
