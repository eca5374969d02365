"""Alembic environment: online migrations against the URL set by ``service.db.migrate``."""

from alembic import context
from sqlalchemy import pool

from service.db.models import Base
from service.db.session import create_db_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = create_db_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
