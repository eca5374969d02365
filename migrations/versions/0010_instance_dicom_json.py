"""instances.dicom_json: each instance's WADO-RS metadata (DICOM JSON, zlib-compressed), kept at ingest

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dicom_json', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('dicom_json')
