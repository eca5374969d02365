"""patient context per study: patient name, patient ID and accession number (shown to signed-in users, audited,
never logged); a Study Instance UID that arrives with a second Patient ID is flagged (uid_collisions kind 'study')

Studies received before this revision keep NULL in the three columns until a page or `m3edge studies list|show`
first shows them: then they are read from one of the study's spooled instances (service.patient_context); a study
whose files are gone stays NULL and pages say "not recorded" rather than guessing.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_name', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('patient_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('accession_number', sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f('ix_studies_patient_id'), ['patient_id'], unique=False)
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('other_patient', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('other_patient')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_patient_id'))
        batch_op.drop_column('accession_number')
        batch_op.drop_column('patient_id')
        batch_op.drop_column('patient_name')
