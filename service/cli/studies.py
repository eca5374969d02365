"""``m3edge studies``: what arrived and where it stands; ``reprocess`` runs the pipeline again."""

from __future__ import annotations

import json

import typer

from service.cli.context import CliError, cli_context
from service.pipeline.stages import Stage

__all__ = ["studies_app"]

studies_app = typer.Typer(help="List and inspect received studies.", no_args_is_help=True)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


@studies_app.command("list")
def list_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON array instead of a table."),
    status: str | None = typer.Option(None, help="Only studies in this status (receiving, complete, ...)."),
    limit: int = typer.Option(100, min=1, max=10_000),
) -> None:
    """One row per study: Study Instance UID, description, modality, status, series and instance counts."""
    from service.catalog import list_studies
    from service.db.models import StudyStatus
    from service.db.session import session_scope

    if status is not None and status not in {s.value for s in StudyStatus}:
        raise CliError(f"unknown status {status!r}; one of {', '.join(s.value for s in StudyStatus)}")
    with session_scope(cli_context(ctx).session_factory) as session:
        rows = list_studies(session, status=status, limit=limit)
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("Study Instance UID", "Description", "Modality", "Status", "Series", "Instances", "Size", "Last received")
    for r in rows:
        table.add_row(
            r.study_uid, r.description, r.modalities, r.status, str(r.series_count), str(r.instance_count),
            _human_bytes(r.size_bytes), r.last_received_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    Console(width=200).print(table)


@studies_app.command("show")
def show_command(
    ctx: typer.Context,
    study_uid: str = typer.Argument(..., help="Study Instance UID."),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of text."),
) -> None:
    """One study: its state, assembly, every series with instance counts, and every pipeline run with each stage's
    start, end and duration."""
    from service.catalog import StudyNotFound, get_study, study_runs
    from service.db.session import session_scope

    with session_scope(cli_context(ctx).session_factory) as session:
        try:
            detail = get_study(session, study_uid)
        except StudyNotFound as exc:
            raise CliError(str(exc)) from exc
        runs = study_runs(session, study_uid)
    if as_json:
        typer.echo(json.dumps({**detail.to_json(), "runs": [run.to_json() for run in runs]}, indent=2))
        return
    s = detail.summary
    typer.echo(f"Study {s.study_uid}")
    typer.echo(f"  description   {s.description or '-'}")
    typer.echo(f"  modality      {s.modalities or '-'}   date {s.study_date or '-'}")
    typer.echo(f"  status        {s.status}" + ("   (reprocess requested)" if detail.reprocess_requested else ""))
    typer.echo(f"  calling AE    {detail.calling_ae or '-'}")
    typer.echo(f"  received      {s.first_received_at:%Y-%m-%d %H:%M:%S} .. {s.last_received_at:%Y-%m-%d %H:%M:%S}")
    if detail.completed_at:
        typer.echo(f"  completed     {detail.completed_at:%Y-%m-%d %H:%M:%S} ({detail.completion_reason}, #{detail.completion_count})")
    if detail.error:
        typer.echo(f"  error         {detail.error}")
    typer.echo(f"  {s.series_count} series, {s.instance_count} instances, {_human_bytes(s.size_bytes)}")
    for series in detail.series:
        flag = f"  {series.conflict_count} CONFLICTING" if series.conflict_count else ""
        typer.echo(
            f"    #{series.series_number if series.series_number is not None else '-':>4} {series.modality:<4} "
            f"{series.instance_count:>5} inst  {series.description or '-'}  {series.series_uid}{flag}"
        )
    for collision in detail.uid_collisions:
        typer.echo(f"  UID COLLISION  {collision.describe()}")
    for run in runs:
        _echo_run(run)


def _when(value) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value else "-"


def _echo_run(run) -> None:
    """One run and its stages: state, attempts, start, end, duration and error (stages of an ended run that never
    ran say so)."""
    typer.echo(f"  run {run.run_number} ({run.trigger}): {run.status}"
               + (f", failed in {run.error_stage}: {run.error}" if run.error_stage else
                  f": {run.error}" if run.error else ""))
    typer.echo(f"    {'stage':<8} {'status':<8} {'tries':>5}  {'started':<19}  {'ended':<19}  {'took':>9}")
    for stage in run.stages:
        took = f"{stage.duration_s:.3f} s" if stage.duration_s is not None else "-"
        status = stage.status.replace("_", " ")
        typer.echo(f"    {stage.stage:<8} {status:<8} {stage.attempts:>5}  {_when(stage.started_at):<19}  "
                   f"{_when(stage.finished_at):<19}  {took:>9}" + (f"  {stage.error}" if stage.error else ""))


@studies_app.command("reprocess")
def reprocess_command(
    ctx: typer.Context,
    study_uid: str = typer.Argument(..., help="Study Instance UID of a received study."),
    from_stage: Stage | None = typer.Option(None, "--from", help="plan, prepare, expert, vlm, report or deliver "
                                            "(default: the stage that failed last, else the start)."),
) -> None:
    """Run the pipeline again for a study: a new run, from the failed stage (or FROM), earlier results reused."""
    from service.composition import build_pipeline
    from service.pipeline.ledger import RunNotFound

    context = cli_context(ctx)
    intake = build_pipeline(context.settings, context.session_factory).intake
    try:
        run_id = intake.reprocess(study_uid, from_stage.value if from_stage else None)
    except RunNotFound as exc:
        raise CliError(f"no study with Study Instance UID {study_uid!r} has been received") from exc
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    typer.echo(f"study {study_uid}: run {run_id} queued" + (f" from {from_stage.value}" if from_stage else ""))
