"""safety: a series belongs to its study (unique on study + series UID), UID collisions flagged

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

# SQLite keeps the old unique constraint unnamed: batch mode names it by this convention so it can be dropped.
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_series_unique() -> str:
    return "series_series_uid_key" if op.get_bind().dialect.name == "postgresql" else "uq_series_series_uid"


def upgrade() -> None:
    with op.batch_alter_table('series', schema=None, naming_convention=_NAMING) as batch_op:
        batch_op.drop_constraint(_old_series_unique(), type_='unique')
        batch_op.create_unique_constraint('uq_series_study_series_uid', ['study_id', 'series_uid'])
        batch_op.create_index('ix_series_series_uid', ['series_uid'], unique=False)

    op.create_table('uid_collisions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('series', 'instance', name='uidkind', native_enum=False, length=16), nullable=False),
    sa.Column('uid', sa.String(length=64), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('other_study_id', sa.Integer(), nullable=False),
    sa.Column('detected_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['other_study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('kind', 'uid', 'study_id', 'other_study_id', name='uq_uid_collisions')
    )
    with op.batch_alter_table('uid_collisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_uid_collisions_other_study_id'), ['other_study_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_uid_collisions_study_id'), ['study_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('uid_collisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_uid_collisions_study_id'))
        batch_op.drop_index(batch_op.f('ix_uid_collisions_other_study_id'))
    op.drop_table('uid_collisions')
    # Fails while a series UID is stored under two studies: those rows cannot be merged back without mixing patients.
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index('ix_series_series_uid')
        batch_op.drop_constraint('uq_series_study_series_uid', type_='unique')
        batch_op.create_unique_constraint(_old_series_unique(), ['series_uid'])
