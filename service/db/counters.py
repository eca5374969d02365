"""Adding to a ``MetricCounter`` inside the caller's transaction: one upsert, so concurrent workers each add their
share (the row's lock orders them), on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.db.models import MetricCounter

__all__ = ["add_to_counter", "STAGE_SECONDS", "STAGES_DONE", "RUNS_FAILED", "DELIVERIES_FAILED"]

STAGE_SECONDS = "stage_seconds"  # label: the stage; seconds from claim to done, summed
STAGES_DONE = "stages_done"  # label: the stage
RUNS_FAILED = "runs_failed"  # label: the stage the run failed in
DELIVERIES_FAILED = "deliveries_failed"  # label: the destination


def add_to_counter(session: Session, name: str, label: str, amount: float = 1.0) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(MetricCounter).values(name=name, label=label[:128], value=float(amount))
    session.execute(statement.on_conflict_do_update(
        index_elements=[MetricCounter.name, MetricCounter.label],
        set_={"value": MetricCounter.value + statement.excluded.value},
    ))
