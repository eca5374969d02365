"""HTTP bodies against a real ``m3edge api``: the caller is checked before a byte of the body is read, and every body
is bounded by its route. Each attack offers 500 MiB over loopback and stops when the server answers; the server's
peak resident memory (VmHWM, reset before each attack) may not grow by more than a few MiB."""

from __future__ import annotations

import pytest

from tests.support.api_process import running_api
from tests.support.http_attacks import MIB, json_prefix, send_body
from tests.support.process_memory import peak_rss_bytes, reset_peak_rss, rss_bytes

ATTACK_BYTES = 500 * MIB
MEMORY_BOUND = 24 * MIB  # before: +1000 MiB for each of these
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with running_api(tmp_path_factory.mktemp("bodies")) as api:
        yield api


def attack(api, path: str, *, chunked: bool, headers: dict[str, str], prefix: bytes = b"", method: str = "POST"):
    """The answer, and how much the server's resident memory grew at its peak during the attack."""
    before = rss_bytes(api.pid)
    reset_peak_rss(api.pid)
    result = send_body(api.port, path, total_bytes=ATTACK_BYTES, chunked=chunked, headers=headers, prefix=prefix,
                       method=method, timeout=60)
    return result, peak_rss_bytes(api.pid) - before


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_huge_login_form_is_refused_at_its_limit_without_buffering(api, chunked):
    result, growth = attack(api, "/ui/login", chunked=chunked, headers=FORM)
    assert result.status == 413, result.head
    assert growth < MEMORY_BOUND, f"the server grew by {growth / MIB:.0f} MiB"


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_huge_json_body_without_a_token_gets_401_before_it_is_read(api, chunked):
    result, growth = attack(api, "/api/v1/admin/users", chunked=chunked, headers=JSON, prefix=json_prefix("name"))
    assert result.status == 401, result.head  # not 422: the token is checked first
    assert result.header("www-authenticate") == "Bearer"
    assert growth < MEMORY_BOUND, f"the server grew by {growth / MIB:.0f} MiB"


def test_a_reviewer_gets_403_from_an_admin_route_before_its_body_is_read(api):
    result, growth = attack(api, "/api/v1/admin/users", chunked=True, headers={**JSON, **api.bearer("rex")},
                            prefix=json_prefix("name"))
    assert result.status == 403, result.head
    assert growth < MEMORY_BOUND
    denied = [e for e in api.audit(actor="rex", action="access.denied") if e["target"] == "/api/v1/admin/users"]
    assert denied, "the refused admin request was not audited"


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_an_admins_huge_json_body_stops_at_the_routes_limit(api, chunked):
    result, growth = attack(api, "/api/v1/admin/users", chunked=chunked, headers={**JSON, **api.bearer("ada")},
                            prefix=json_prefix("name"))
    assert result.status == 413, result.head
    assert growth < MEMORY_BOUND, f"the server grew by {growth / MIB:.0f} MiB"


def test_a_dashboard_form_without_a_session_goes_to_the_login_page_unread(api):
    result, growth = attack(api, "/ui/logout", chunked=True, headers=FORM)
    assert result.status == 303 and result.header("location").startswith("/ui/login"), result.head
    assert growth < MEMORY_BOUND


def test_stow_rs_reads_nothing_from_an_unknown_caller(api):
    multipart = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'}
    result, growth = attack(api, "/dicomweb/studies", chunked=True, headers=multipart, prefix=b"--x\r\n\r\n")
    assert result.status == 401, result.head
    assert growth < MEMORY_BOUND


def test_the_server_still_answers_after_the_attacks(api):
    import httpx

    response = httpx.get(api.base_url + "/api/v1/studies", headers=api.bearer("rex"))
    assert response.status_code == 200
