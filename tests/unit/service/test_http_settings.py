"""The HTTP server's settings: whose forwarded headers are believed, TLS, sessions, and the request gate's rules."""

from __future__ import annotations

import re
import ssl

import pytest

from service.api.request_gate import BODY_RULES, CallerCheck, rule_for
from service.api.server import uvicorn_options
from service.config import ConfigurationError, CookieSecurity, Settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("M3EDGE_") or key == "FORWARDED_ALLOW_IPS":
            monkeypatch.delenv(key)


def test_by_default_no_forwarded_header_is_believed_and_sessions_last_8_hours():
    settings = Settings.load()
    options = uvicorn_options(settings)
    assert options["proxy_headers"] is False and options["forwarded_allow_ips"] == []
    assert "ssl_certfile" not in options
    assert (settings.session_idle_seconds, settings.session_lifetime_seconds) == (1800, 28800)
    assert settings.session_cookie_secure is CookieSecurity.AUTO


def test_trusted_proxies_and_tls_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("M3EDGE_API_TRUSTED_PROXIES", "10.0.0.5, 192.168.10.0/24")
    monkeypatch.setenv("M3EDGE_API_TLS__CERTIFICATE", str(tmp_path / "api.crt"))
    monkeypatch.setenv("M3EDGE_API_TLS__PRIVATE_KEY", str(tmp_path / "api.key"))
    monkeypatch.setenv("M3EDGE_API_TLS__REQUIRE_CLIENT_CERTIFICATE", "true")
    monkeypatch.setenv("M3EDGE_SESSION_COOKIE_SECURE", "always")
    settings = Settings.load()
    options = uvicorn_options(settings)
    assert options["proxy_headers"] is True and options["forwarded_allow_ips"] == ["10.0.0.5", "192.168.10.0/24"]
    assert options["ssl_certfile"] == str(tmp_path / "api.crt") and options["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert settings.session_cookie_secure is CookieSecurity.ALWAYS


@pytest.mark.parametrize("value", ["proxy.example", "10.0.0.300", "*"])
def test_a_trusted_proxy_must_be_an_address_or_network(monkeypatch, value):
    monkeypatch.setenv("M3EDGE_API_TRUSTED_PROXIES", value)
    with pytest.raises(ConfigurationError, match="API_TRUSTED_PROXIES.*not an IP address or network"):
        Settings.load()


def body_routes(app):
    """(method, path) of every route that may take a body: the API from its OpenAPI schema, and the dashboard's pages
    (left out of the schema) from its routers."""
    from service.api.ui import DASHBOARD_ROUTERS

    for path, operations in app.openapi()["paths"].items():
        yield from ((method.upper(), path) for method in operations)
    for router in DASHBOARD_ROUTERS:
        for route in router.routes:
            yield from ((method, route.path) for method in route.methods)


def test_every_route_that_takes_a_body_checks_its_caller_first_and_bounds_the_body(tmp_path):
    """Enumerated from the app itself, so a new route cannot escape the gate unchecked or unbounded."""
    from service.composition import build_api

    seen = {(method, path) for method, path in body_routes(build_api(Settings(home=tmp_path)))
            if method in {"POST", "PUT", "PATCH", "DELETE"}}
    for method, path in seen:
        rule = rule_for(method, re.sub(r"\{[^}]+\}", "x1", path))
        if path == "/ui/login":
            assert rule.caller is CallerCheck.ANYONE and rule.limit <= 16 * 1024
            continue
        assert rule.caller is not CallerCheck.ANYONE, (method, path)
        if path.startswith("/api/v1/admin"):
            assert rule.caller is CallerCheck.ADMIN, (method, path)
        if path.startswith("/dicomweb/studies") and method == "POST":
            assert rule.limit is None  # STOW-RS streams its body and bounds it itself
        else:
            assert rule.limit is not None and rule.limit <= 1024 * 1024, (method, path)
    assert {("POST", "/api/v1/admin/users"), ("POST", "/dicomweb/studies"), ("POST", "/ui/logout")} <= seen
    assert len(seen) >= 12
    assert BODY_RULES[-1].pattern == ".*" and BODY_RULES[-1].limit is not None  # a path no rule names is bounded


@pytest.mark.parametrize("path", ["/api/v1/studies/\u00ab\n\u0002/review", "/\n", "", "/ui/login\n"])
def test_any_path_has_a_rule_and_control_characters_change_nothing(path):
    rule = rule_for("POST", path)
    assert rule.limit is not None
    if path.startswith("/api/"):
        assert rule.caller is CallerCheck.CALLER
    if path == "/ui/login\n":
        assert rule.caller is CallerCheck.PAGE  # not the log-in form: the session is checked
