"""Every route is authenticated and authorised; the list comes from the app itself, so a new route cannot escape."""

import re

import httpx
import pytest
from sqlalchemy import text

from service.db.session import session_scope

PUBLIC = {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
ADMIN_PREFIX = "/api/v1/admin"


def concrete(path):
    return re.sub(r"\{[^}]+\}", lambda m: "rex" if m.group(0) == "{name}" else "1.2.3", path)


def api_routes(app):
    for path, methods in app.openapi()["paths"].items():
        if path in PUBLIC:
            continue
        for method in methods:
            yield method.upper(), path


def test_every_route_needs_a_token_and_admin_routes_need_the_admin_role(api):
    base, tokens, _, app = api
    routes = list(api_routes(app))
    assert len(routes) >= 8 and all(p.startswith(("/api/", "/dicomweb", "/ui")) for _, p in routes), routes
    with httpx.Client(base_url=base) as client:
        for method, path in routes:
            url = concrete(path)
            missing = client.request(method, url)
            assert missing.status_code == 401, (method, path, missing.status_code)
            assert missing.headers["content-type"].startswith("application/problem+json")
            wrong = client.request(method, url, headers={"Authorization": "Bearer m3e_not-a-real-token"})
            assert wrong.status_code == 401, (method, path)
            if path.startswith(ADMIN_PREFIX):
                reviewer = client.request(method, url, headers={"Authorization": f"Bearer {tokens['reviewer']}"})
                assert reviewer.status_code == 403, (method, path, reviewer.status_code)


def test_revoked_token_is_refused_and_denials_are_audited(api):
    base, tokens, _, _ = api
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    reviewer = {"Authorization": f"Bearer {tokens['reviewer']}"}
    with httpx.Client(base_url=base) as client:
        assert client.get("/api/v1/studies", headers=reviewer).status_code == 200
        assert client.get("/api/v1/admin/users", headers=reviewer).status_code == 403
        assert client.post("/api/v1/admin/users/rex/revoke-tokens", headers=admin).json()["revoked"] == 1
        assert client.get("/api/v1/studies", headers=reviewer).status_code == 401
        audit = client.get("/api/v1/admin/audit", headers=admin, params={"actor": "rex"}).json()
        # newest first: the refused read, then the list it read before (studies carry patient context: audited)
        assert [e["action"] for e in audit["items"]] == ["access.denied", "studies.list"]
        assert audit["items"][0]["outcome"] == "denied" and audit["items"][0]["remote_addr"] == "127.0.0.1"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/studies/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/studies/1.2.3'%20OR%20'1'='1",
        "/api/v1/studies/1.2.3;DROP%20TABLE%20studies",
        "/api/v1/studies?modality=CT'--",
        "/api/v1/studies?date_from=2026-01-01",
        "/api/v1/studies?limit=100000",
        "/api/v1/studies?status=deleted",
    ],
)
def test_injection_attempts_get_4xx(api, path):
    base, tokens, _, _ = api
    response = httpx.get(base + path, headers={"Authorization": f"Bearer {tokens['reviewer']}"})
    assert 400 <= response.status_code < 500, (path, response.status_code, response.text)


def test_audit_log_is_append_only_in_the_database(api, session_factory):
    base, tokens, _, _ = api
    httpx.get(base + "/api/v1/admin/users", headers={"Authorization": f"Bearer {tokens['reviewer']}"})
    with pytest.raises(Exception, match="append-only"):
        with session_scope(session_factory) as session:
            session.execute(text("UPDATE audit_events SET actor = 'someone else'"))
    with pytest.raises(Exception, match="append-only"):
        with session_scope(session_factory) as session:
            session.execute(text("DELETE FROM audit_events"))


def test_a_browser_session_needs_the_csrf_token_to_change_state_through_the_api(api, session_factory):
    base, _, _, _ = api
    with httpx.Client(base_url=base) as browser:
        form = browser.get("/ui/login").text
        login_csrf = re.search(r'name="csrf_token" value="([^"]*)"', form).group(1)
        logged_in = browser.post("/ui/login", data={"username": "rex", "password": "another long secret",
                                                    "csrf_token": login_csrf, "next": "/ui/"})
        assert logged_in.status_code == 303
        cookie = f"m3edge_session={browser.cookies['m3edge_session']}"
        csrf = re.search(r'name="csrf_token" value="([^"]*)"', browser.get("/ui/").text).group(1)
    with httpx.Client(base_url=base, headers={"Cookie": cookie}) as client:
        assert client.get("/api/v1/studies").status_code == 200  # reading with the session is fine
        body = {"from_stage": "plan"}
        refused = client.post("/api/v1/studies/1.2.3/reprocess", json=body)
        assert refused.status_code == 403 and "CSRF" in refused.json()["title"]
        wrong = client.post("/api/v1/studies/1.2.3/reprocess", json=body, headers={"X-CSRF-Token": "forged"})
        assert wrong.status_code == 403
        allowed = client.post("/api/v1/studies/1.2.3/reprocess", json=body, headers={"X-CSRF-Token": csrf})
        assert allowed.status_code == 404  # past authentication: the study does not exist
