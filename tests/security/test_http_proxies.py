"""Forwarded headers and the session cookie's ``Secure`` flag against a real ``m3edge api``.

By default nobody's ``X-Forwarded-For``/``-Proto`` is believed (uvicorn's own default believes 127.0.0.1, which let a
local caller fake the audit log's address and dodge the per-address log-in limit); a proxy named in
``API_TRUSTED_PROXIES`` is believed. The cookie is ``Secure`` over HTTPS (uvicorn's own TLS, or a trusted proxy's
``X-Forwarded-Proto: https``) and with ``SESSION_COOKIE_SECURE=always``."""

from __future__ import annotations

import ssl
import subprocess
import sys

import httpx
import pytest

from tests.conftest import require_tool
from tests.support.api_process import CSRF_FIELD, PASSWORDS, log_in, running_api
from tests.support.m3edge_processes import ROOT

pytestmark = pytest.mark.slow  # real m3edge processes started for these tests

FORGED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


def session_cookie_flags(response: httpx.Response) -> set[str]:
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("m3edge_session="))
    return {part.strip().lower() for part in cookie.split(";")[1:]}


def log_in_as_a_proxy(api, headers: dict[str, str]) -> httpx.Response:
    """The log-in a TLS proxy forwards: the browser speaks HTTPS to the proxy, so its cookies are sent back even when
    they are Secure (httpx, speaking plain HTTP here, would keep them back: they are handed over by hand)."""
    page = httpx.get(api.base_url + "/ui/login", headers=headers)
    login_cookie = page.headers["set-cookie"].split(";")[0]
    return httpx.post(api.base_url + "/ui/login", headers={**headers, "Cookie": login_cookie},
                      data={"username": "rex", "password": PASSWORDS["rex"], "next": "/ui/",
                            "csrf_token": CSRF_FIELD.search(page.text).group(1)})


def login_addresses(api, name: str) -> list[str]:
    return [e["remote_addr"] for e in api.audit(action="ui.login", actor=name)]


def test_forwarded_headers_from_loopback_are_not_believed_by_default(tmp_path):
    with running_api(tmp_path) as api:
        with httpx.Client(base_url=api.base_url, headers=FORGED) as client:
            response = log_in(client, "rex")
            assert response.status_code == 303
            assert "secure" not in session_cookie_flags(response)  # plain HTTP, whatever the header says
        assert login_addresses(api, "rex") == ["127.0.0.1"]
        # the per-address limit (20 failures) holds whatever address each guess claims
        statuses = []
        for n in range(21):
            with httpx.Client(base_url=api.base_url, headers={"X-Forwarded-For": f"198.51.100.{n}"}) as client:
                statuses.append(log_in(client, f"sprayed{n}", "not the password").status_code)
        assert statuses[:20] == [401] * 20 and statuses[20] == 429


def test_a_trusted_proxys_forwarded_headers_are_believed(tmp_path):
    with running_api(tmp_path, api_trusted_proxies="127.0.0.1") as api:
        response = log_in_as_a_proxy(api, FORGED)
        assert response.status_code == 303 and "secure" in session_cookie_flags(response)
        assert login_addresses(api, "rex") == ["203.0.113.7"]


def test_session_cookie_secure_always_marks_the_cookie_over_plain_http(tmp_path):
    with running_api(tmp_path, session_cookie_secure="always") as api:
        response = log_in_as_a_proxy(api, {})
        assert response.status_code == 303 and "secure" in session_cookie_flags(response)


@pytest.fixture
def certificate(tmp_path):
    key, cert = tmp_path / "api.key", tmp_path / "api.crt"
    subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def test_api_tls_serves_https_with_a_secure_cookie(tmp_path, certificate):
    cert, key = certificate
    with running_api(tmp_path, scheme="https", api_tls__certificate=str(cert), api_tls__private_key=str(key)) as api:
        with httpx.Client(base_url=api.base_url, verify=ssl.create_default_context(cafile=str(cert))) as client:
            response = log_in(client, "rex")
            assert response.status_code == 303 and "secure" in session_cookie_flags(response)
            assert client.get("/ui/").status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(api.base_url.replace("https://", "http://") + "/healthz", timeout=5)
        # the image's health check follows the API to HTTPS (ready: the spool is there, as the node would make it)
        (tmp_path / "home" / "spool").mkdir()
        health = subprocess.run([sys.executable, str(ROOT / "deploy" / "container" / "healthcheck.py"), "readyz"],
                                env=api.env, capture_output=True, text=True, timeout=30)
        assert health.returncode == 0, health.stderr
