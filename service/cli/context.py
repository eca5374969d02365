"""What every command shares: the settings (loaded once, lazily) and the database they name."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import typer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import ConfigurationError, Settings
from service.logs import configure_logging

__all__ = ["CliContext", "CliError", "cli_context"]


class CliError(Exception):
    """A failure the operator can act on; printed without a traceback, exit status 2."""


@dataclass
class CliContext:
    overrides: dict = field(default_factory=dict)

    @classmethod
    def create(cls) -> CliContext:
        return cls()

    @cached_property
    def settings(self) -> Settings:
        try:
            settings = Settings.load(**self.overrides)
        except ConfigurationError as exc:
            raise CliError(f"invalid configuration: {exc}") from exc
        configure_logging(settings.log_level, settings.log_json)
        return settings

    @cached_property
    def engine(self) -> Engine:
        from service.db.session import create_db_engine

        return create_db_engine(self.settings.effective_database_url)

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        from service.db.session import make_session_factory

        return make_session_factory(self.engine)


def cli_context(ctx: typer.Context) -> CliContext:
    return ctx.find_root().obj
