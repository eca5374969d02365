"""STOW-RS takes the same admission by disk as C-STORE (issue 13 point 9): while the spool's disk is below its reserve
(``SPOOL_RESERVE_BYTES``), a STOW-RS request is answered 503 with ``Retry-After`` and nothing is stored; the same
study is taken once the reserve allows it."""

from __future__ import annotations

from io import BytesIO

import httpx
from sqlalchemy import func, select

from service.api.app import create_app
from service.config import Settings
from service.db.models import Instance
from service.db.session import session_scope
from service.pipeline.intake import PipelineIntake
from service.pipeline.ledger import PipelineLedger
from service.security import add_user
from tests.integration.api.conftest import RecordingDispatcher
from tests.support.api_server import running_app
from tests.support.source_study import brain_mr_study

BOUNDARY = "b0undary"


def _body(datasets) -> bytes:
    parts = []
    for dataset in datasets:
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        parts.append(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue() + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _post(database_url, session_factory, home, body: bytes, token: str | None, **limits) -> httpx.Response:
    settings = Settings(home=home, database_url=database_url, **limits)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    ledger = PipelineLedger(session_factory)
    app = create_app(settings, session_factory, PipelineIntake(ledger, RecordingDispatcher(ledger)))
    with running_app(app) as base:
        return httpx.post(f"{base}/dicomweb/studies", content=body, timeout=60, headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'})


def _instances(session_factory) -> int:
    with session_scope(session_factory) as session:
        return session.execute(select(func.count()).select_from(Instance)).scalar_one()


def test_stow_is_refused_with_503_while_the_spools_disk_is_below_its_reserve(database_url, session_factory, tmp_path):
    with session_scope(session_factory) as session:
        _, token = add_user(session, "rex", "reviewer")
    body = _body(brain_mr_study().series["t1"][:2])
    home = tmp_path / "home"

    refused = _post(database_url, session_factory, home, body, token, spool_reserve_bytes=1 << 62)
    assert refused.status_code == 503, refused.text
    assert refused.json()["title"] == "spool full" and int(refused.headers["Retry-After"]) > 0
    assert _instances(session_factory) == 0
    spool = Settings(home=home, database_url=database_url).spool_dir
    assert [p for p in spool.rglob("*") if p.is_file()] == []

    taken = _post(database_url, session_factory, home, body, token)  # the default reserve: this disk has room
    assert taken.status_code == 200, taken.text
    assert _instances(session_factory) == 2
