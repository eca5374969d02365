"""Studies completed (and runs failed) per hour over the last hours, and the bar chart the admin page draws of them.

Counted from ``pipeline_runs.finished_at`` in Python (a few hundred rows a day), so the same code runs on SQLite and
PostgreSQL without date functions of either. The chart is inline SVG computed here: no script, no chart library.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import PipelineRun, RunStatus, utcnow

__all__ = ["HourlyCount", "ThroughputChart", "hourly_throughput", "throughput_chart"]


@dataclass(frozen=True)
class HourlyCount:
    hour: datetime  # start of the hour, UTC
    completed: int
    failed: int


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str  # completed | failed
    title: str


@dataclass(frozen=True)
class ThroughputChart:
    width: int
    height: int
    bars: list[Bar]
    labels: list[tuple[float, str]]  # (x, text) under the axis
    peak: int
    total_completed: int
    total_failed: int


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def hourly_throughput(session: Session, hours: int = 24, now: datetime | None = None) -> list[HourlyCount]:
    """``hours`` buckets, oldest first, the last one being the current (partial) hour."""
    now = _aware(now or utcnow())
    current = now.replace(minute=0, second=0, microsecond=0)
    start = current - timedelta(hours=hours - 1)
    rows = session.execute(
        select(PipelineRun.status, PipelineRun.finished_at)
        .where(PipelineRun.finished_at >= start, PipelineRun.status.in_([RunStatus.DONE, RunStatus.FAILED]))
    ).all()
    completed = [0] * hours
    failed = [0] * hours
    for status, finished in rows:
        index = int((_aware(finished) - start).total_seconds() // 3600)
        if 0 <= index < hours:
            (completed if status is RunStatus.DONE else failed)[index] += 1
    return [HourlyCount(start + timedelta(hours=i), completed[i], failed[i]) for i in range(hours)]


def throughput_chart(counts: list[HourlyCount], width: int = 720, height: int = 160) -> ThroughputChart:
    """Side-by-side bars (completed, failed) per hour, scaled to the busiest hour; a label every 3 hours."""
    peak = max([max(c.completed, c.failed) for c in counts] + [1])
    plot_height = height - 20
    slot = width / max(1, len(counts))
    bar_width = max(1.0, slot * 0.4)
    bars: list[Bar] = []
    labels: list[tuple[float, str]] = []
    for i, count in enumerate(counts):
        left = i * slot + slot * 0.1
        for offset, kind, value in ((0.0, "completed", count.completed), (bar_width, "failed", count.failed)):
            if value:
                bar_height = plot_height * value / peak
                bars.append(Bar(round(left + offset, 1), round(plot_height - bar_height, 1), round(bar_width, 1),
                                round(bar_height, 1), kind, f"{count.hour:%H}:00 UTC: {value} {kind}"))
        if i % 3 == 0 or i == len(counts) - 1:
            labels.append((round(left, 1), f"{count.hour:%H}h"))
    return ThroughputChart(width, height, bars, labels, peak, sum(c.completed for c in counts),
                           sum(c.failed for c in counts))
