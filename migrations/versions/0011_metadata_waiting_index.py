"""instances: a partial index on the rows whose DICOM JSON the metadata keeper has still to keep

The metadata (migration 0010) is kept by ``service.dicomweb.metadata_keeper`` once a study is quiet, no longer by the
receiving process; the keeper finds the rows waiting through this index (only those rows are in it).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_instances_metadata_waiting', 'instances', ['id'], unique=False,
                    sqlite_where=sa.text('dicom_json IS NULL'), postgresql_where=sa.text('dicom_json IS NULL'))


def downgrade() -> None:
    op.drop_index('ix_instances_metadata_waiting', table_name='instances')
