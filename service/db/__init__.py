"""Database models, engine and migrations entry points."""

from service.db.migrate import upgrade_database
from service.db.models import Base, Instance, Series, Study, StudyStatus, utcnow
from service.db.session import create_db_engine, make_session_factory, session_scope

__all__ = [
    "Base",
    "Instance",
    "Series",
    "Study",
    "StudyStatus",
    "create_db_engine",
    "make_session_factory",
    "session_scope",
    "upgrade_database",
    "utcnow",
]
