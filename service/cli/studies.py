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


def _shown(value: str | None) -> str:
    """A patient attribute as printed: "not recorded" for a study received before m3edge kept them."""
    return "not recorded" if value is None else value or "-"


def _audit_cli_read(session, action: str, study_uids: list[str], **detail) -> None:
    """Patient context printed on a terminal is an access like any other: audited under actor ``cli``."""
    import getpass

    from service.security import record_audit

    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): the uid itself
        import os

        who = f"uid {os.getuid()}"
    for study_uid in study_uids[:1] if action == "study.read" else [""]:
        record_audit(session, "cli", action, study_uid=study_uid, target=f"os-user:{who}"[:256],
                     detail={"via": "cli", "studies": study_uids[:200], **detail})


def _backfill(session, settings, study_uids: list[str] | None = None) -> None:
    """Patient context of studies received before m3edge kept it, read from their spooled files (up to 500)."""
    from sqlalchemy import select

    from service.db.models import Study
    from service.patient_context import backfill_patient_context

    if study_uids is None:
        study_uids = list(session.scalars(select(Study.study_uid).where(Study.patient_id.is_(None)).limit(500)))
    if study_uids and backfill_patient_context(session, settings.spool_dir, study_uids):
        session.flush()


@studies_app.command("list")
def list_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON array instead of a table."),
    status: str | None = typer.Option(None, help="Only studies in this status (receiving, complete, ...)."),
    state: str | None = typer.Option(None, help="Only studies in this review state: awaiting_review, verified, "
                                     "rejected, failed, skipped, in_progress (the worklist's states)."),
    search: str | None = typer.Option(None, "--search", help="Patient ID, name or accession number (a part of any "
                                      "of them, any case)."),
    limit: int = typer.Option(100, min=1, max=500),
) -> None:
    """One row per study, newest first (with --state: the worklist's order, urgent first then the oldest): Study
    Instance UID, patient name and ID, accession number, study date, description, modality, status, series and
    instance counts. Patient context is shown to whoever runs the command: the read is audited (actor cli)."""
    from service.catalog import list_studies
    from service.db.models import StudyStatus
    from service.db.session import session_scope
    from service.worklist import MAX_SEARCH_LENGTH, ReviewState, WorklistQuery, query_worklist

    if status is not None and status not in {s.value for s in StudyStatus}:
        raise CliError(f"unknown status {status!r}; one of {', '.join(s.value for s in StudyStatus)}")
    if state is not None and state not in {s.value for s in ReviewState}:
        raise CliError(f"unknown state {state!r}; one of {', '.join(s.value for s in ReviewState)}")
    if search is not None and len(search) > MAX_SEARCH_LENGTH:
        raise CliError(f"--search is at most {MAX_SEARCH_LENGTH} characters")
    context = cli_context(ctx)
    with session_scope(context.session_factory) as session:
        _backfill(session, context.settings)
        if state is not None or search:
            entries, _ = query_worklist(session, WorklistQuery(
                states=(state,) if state else (), search=search or "", limit=limit, include_skipped=True))
            rows = [e.study for e in entries if status is None or e.study.status == status]
        else:
            rows = list_studies(session, status=status, limit=limit)
        _audit_cli_read(session, "studies.list", [r.study_uid for r in rows], searched=bool(search))
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("Study Instance UID", "Patient", "Patient ID", "Accession", "Study date", "Description", "Modality",
                  "Status", "Series", "Instances", "Size", "Last received")
    for r in rows:
        table.add_row(
            r.study_uid, _shown(r.patient_name), _shown(r.patient_id), _shown(r.accession_number),
            r.study_date or "-", r.description, r.modalities, r.status, str(r.series_count), str(r.instance_count),
            _human_bytes(r.size_bytes), r.last_received_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    Console(width=240).print(table)


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

    context = cli_context(ctx)
    with session_scope(context.session_factory) as session:
        try:
            _backfill(session, context.settings, [study_uid])
            detail = get_study(session, study_uid)
        except StudyNotFound as exc:
            raise CliError(str(exc)) from exc
        runs = study_runs(session, study_uid)
        _audit_cli_read(session, "study.read", [study_uid])
    if as_json:
        typer.echo(json.dumps({**detail.to_json(), "runs": [run.to_json() for run in runs]}, indent=2))
        return
    s = detail.summary
    typer.echo(f"Study {s.study_uid}")
    typer.echo(f"  patient       {_shown(s.patient_name)}   ID {_shown(s.patient_id)}   accession "
               f"{_shown(s.accession_number)}")
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
        if series.other_patient_count:
            flag += f"  {series.other_patient_count} OF ANOTHER PATIENT (kept, not served, not processed)"
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
