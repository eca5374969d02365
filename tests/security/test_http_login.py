"""The dashboard's log-in limit under concurrency, against a real ``m3edge api`` (on SQLite and on PostgreSQL, where
the attempts are counted): 30 simultaneous guesses for one name get at most 5 passwords checked, and once 5 have
failed the right password is refused as locked. Before: 17 of 30 were checked, and the right one logged in."""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest

from tests.support.api_process import CSRF_FIELD, PASSWORDS, log_in, running_api
from tests.support.databases import create_postgres_database, drop_postgres_database

pytestmark = pytest.mark.slow  # real m3edge processes started for these tests

GUESSES = 30
LIMIT_PER_USER = 5  # LoginThrottle's default


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def api(request, tmp_path):
    settings = {}
    name = f"m3edge_login_{uuid.uuid4().hex[:10]}"
    if request.param == "postgresql":
        settings["database_url"] = create_postgres_database(name)
        from service.db.migrate import upgrade_database

        upgrade_database(settings["database_url"])
    try:
        with running_api(tmp_path, **settings) as api:
            yield api
    finally:
        if request.param == "postgresql":
            drop_postgres_database(name)


def test_concurrent_guesses_cannot_pass_the_limit(api):
    clients = [httpx.Client(base_url=api.base_url, timeout=60) for _ in range(GUESSES)]
    try:
        tokens = [CSRF_FIELD.search(client.get("/ui/login").text).group(1) for client in clients]
        start = threading.Barrier(GUESSES)
        statuses: list[int] = []

        def guess(client: httpx.Client, token: str, n: int) -> None:
            start.wait()
            response = client.post("/ui/login", data={"username": "rex", "password": f"wrong guess number {n}",
                                                      "csrf_token": token, "next": "/ui/"})
            statuses.append(response.status_code)

        threads = [threading.Thread(target=guess, args=(c, t, n)) for n, (c, t) in enumerate(zip(clients, tokens))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for client in clients:
            client.close()
    assert len(statuses) == GUESSES
    checked = statuses.count(401)
    assert checked <= LIMIT_PER_USER, f"{checked} passwords were checked; the limit is {LIMIT_PER_USER}"
    assert statuses.count(429) == GUESSES - checked
    with httpx.Client(base_url=api.base_url) as client:
        # guesses still pending while others counted them made some refusals early: the rest of the limit is left
        for n in range(LIMIT_PER_USER - checked):
            assert log_in(client, "rex", f"one more wrong guess {n}").status_code == 401
        right = log_in(client, "rex", PASSWORDS["rex"])
        assert right.status_code == 429 and "m3edge_session" not in right.headers.get("set-cookie", "")
    outcomes = [e["outcome"] for e in api.audit(action="ui.login", actor="rex")]
    assert outcomes.count("failure") == LIMIT_PER_USER and "success" not in outcomes
