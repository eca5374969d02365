"""safety: a series belongs to its study (unique on study + series UID), UID collisions flagged; stages of ended
runs not_run; metric counters

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


    op.create_table('metric_counters',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=128), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name', 'label')
    )
    _stages_of_ended_runs_not_run()
    _counters_from_history()


def _stages_of_ended_runs_not_run() -> None:
    op.execute(
        "UPDATE stage_runs SET status = 'not_run' WHERE status IN ('pending', 'queued') AND run_id IN "
        "(SELECT id FROM pipeline_runs WHERE status IN ('done', 'failed', 'skipped'))"
    )


def _counters_from_history() -> None:
    """What /metrics summed from history until now becomes the counters' starting values."""
    bind = op.get_bind()
    seconds = ("EXTRACT(EPOCH FROM (finished_at - started_at))" if bind.dialect.name == "postgresql"
               else "(julianday(finished_at) - julianday(started_at)) * 86400.0")
    op.execute(
        "INSERT INTO metric_counters (name, label, value) SELECT 'stages_done', stage, COUNT(*) FROM stage_runs "
        "WHERE status = 'done' AND started_at IS NOT NULL AND finished_at IS NOT NULL GROUP BY stage"
    )
    op.execute(
        f"INSERT INTO metric_counters (name, label, value) SELECT 'stage_seconds', stage, SUM({seconds}) "
        "FROM stage_runs WHERE status = 'done' AND started_at IS NOT NULL AND finished_at IS NOT NULL GROUP BY stage"
    )
    op.execute(
        "INSERT INTO metric_counters (name, label, value) SELECT 'runs_failed', error_stage, COUNT(*) "
        "FROM pipeline_runs WHERE error_stage != '' GROUP BY error_stage"
    )
    op.execute(
        "INSERT INTO metric_counters (name, label, value) SELECT 'deliveries_failed', destination, COUNT(*) "
        "FROM deliveries WHERE status = 'failed' GROUP BY destination"
    )


def downgrade() -> None:
    op.drop_table('metric_counters')
    op.execute("UPDATE stage_runs SET status = 'pending' WHERE status = 'not_run'")
    with op.batch_alter_table('uid_collisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_uid_collisions_study_id'))
        batch_op.drop_index(batch_op.f('ix_uid_collisions_other_study_id'))
    op.drop_table('uid_collisions')
    # Fails while a series UID is stored under two studies: those rows cannot be merged back without mixing patients.
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index('ix_series_series_uid')
        batch_op.drop_constraint('uq_series_study_series_uid', type_='unique')
        batch_op.create_unique_constraint(_old_series_unique(), ['series_uid'])
