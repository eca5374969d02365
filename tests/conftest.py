"""Fixtures every test may use: a migrated database (SQLite and PostgreSQL), free ports, real-peer tools."""

from __future__ import annotations

import itertools
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import pytest

from service.db.migrate import upgrade_database
from service.db.models import Base
from service.db.session import create_db_engine, make_session_factory
from tests.support.databases import create_postgres_database, drop_postgres_database

if TYPE_CHECKING:
    from tests.support.powerloss import PowerLossSimulator



@pytest.fixture(scope="session", autouse=True)
def _strict_pydicom() -> Iterator[None]:
    """Our own writers must produce standard-conformant data: pydicom raises instead of warning."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.WARN
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def migrated_database_url(request, tmp_path_factory) -> Iterator[str]:
    """A database at the latest migration: the suite's tests that touch the database run against both engines."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'm3edge.db'}"
        upgrade_database(url)
        yield url
        return
    name = f"m3edge_test_{uuid.uuid4().hex[:12]}"
    url = create_postgres_database(name)
    try:
        upgrade_database(url)
        yield url
    finally:
        drop_postgres_database(name)


def sqlite_only_database(tmp_path_factory) -> str:
    """A migrated SQLite database, for a module that overrides ``migrated_database_url`` with it: tests of routing,
    prepare and the result objects, which the database engine does not change (the ledger, the recorder and the API
    run on both engines in their own tests), and which are too slow to run twice."""
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'm3edge.db'}"
    upgrade_database(url)
    return url


@pytest.fixture(scope="session")
def small_demo_models_dir(tmp_path_factory):
    """The small demo models (``tests.support.pipeline_study.small_demo_models``), written once per session: link
    them into a test's HOME as ``models``."""
    from tests.support.pipeline_study import small_demo_models

    return small_demo_models(tmp_path_factory.mktemp("demo-models") / "models")


@pytest.fixture
def database_url(migrated_database_url: str) -> Iterator[str]:
    """The migrated database, emptied after each test."""
    yield migrated_database_url
    engine = create_db_engine(migrated_database_url)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # TRUNCATE does not fire the audit log's append-only trigger
            names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            connection.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        else:
            triggers = connection.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").all()
            for name, _ in triggers:
                connection.exec_driver_sql(f'DROP TRIGGER "{name}"')
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(table.delete())
            for _, sql in triggers:
                connection.exec_driver_sql(sql)
    engine.dispose()


@pytest.fixture
def db_engine(database_url: str):
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(db_engine):
    return make_session_factory(db_engine)


def require_tool(name: str) -> str:
    """The path of a real peer's executable; the test command installs them, so absence is an error, not a skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/test, which installs dcmtk, orthanc and dicom3tools")
    return path


@pytest.fixture(scope="session")
def powerloss_shim(tmp_path_factory) -> Path:
    """The power-loss recorder (tests/support/powerloss), compiled with the machine's gcc once per session."""
    from tests.support.powerloss import build_shim

    return build_shim(tmp_path_factory.mktemp("powerloss-shim"))


@pytest.fixture
def power_loss(powerloss_shim, tmp_path) -> Callable[[Path], PowerLossSimulator]:
    """``power_loss(root)``: a :class:`PowerLossSimulator` armed on ``root`` (its logs in this test's tmp_path)."""
    from tests.support.powerloss import PowerLossSimulator

    made = itertools.count()

    def arm(root: Path) -> PowerLossSimulator:
        return PowerLossSimulator(root, tmp_path / f"powerloss-{next(made)}", powerloss_shim).arm()

    return arm
