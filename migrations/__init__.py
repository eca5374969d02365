"""Alembic revisions of the m3edge database."""
