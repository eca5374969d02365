"""``m3edge routes``: validate routing rules and show which rule a stored study would take, and why."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import typer

from service.cli.context import CliError, cli_context

__all__ = ["routes_app"]

routes_app = typer.Typer(help="Validate routing rules and dry-run them on stored studies.", no_args_is_help=True)


def _rules(ctx: typer.Context, path: Path | None):
    from service.routing import RoutingRulesError, load_rules
    from service.routing.store import RoutingRulesStore

    settings = cli_context(ctx).settings
    try:
        return load_rules(path) if path else RoutingRulesStore(settings).load()
    except RoutingRulesError as exc:
        raise CliError(str(exc)) from exc


@routes_app.command("check")
def check(
    ctx: typer.Context,
    path: Path | None = typer.Argument(None, help="Rules file (default: ROUTING_RULES, or the built-in rules)."),
) -> None:
    """Validate a rules file; every problem is printed with its line and field."""
    rules = _rules(ctx, path)
    for rule in rules.rules:
        target = rule.expert + (f"({rule.argument})" if rule.argument else "()")
        state = "" if rule.enabled else "  (disabled)"
        typer.echo(f"{rule.name:<24} -> {target:<28} {rule.priority.value}{state}")
    typer.echo(f"{len(rules.rules)} rules OK")


@routes_app.command("dry-run")
def dry_run(
    ctx: typer.Context,
    study_uid: str = typer.Argument(..., help="Study Instance UID of a received study."),
    path: Path | None = typer.Option(None, "--rules", help="Rules file to try instead of the configured one."),
) -> None:
    """Show which rule a stored study would take and why each rule before it did not match."""
    from sqlalchemy import select

    from dicom_node.facts import facts_from_files
    from service.db.models import Instance, Series, Study
    from service.db.session import session_scope
    from service.routing import route_study

    rules = _rules(ctx, path)
    context = cli_context(ctx)
    with session_scope(context.session_factory) as session:
        rows = session.execute(
            select(Series.series_uid, Instance.path)
            .join(Instance, Instance.series_id == Series.id)
            .join(Study, Study.id == Series.study_id)
            .where(Study.study_uid == study_uid, Instance.conflict.is_(False))
        ).all()
    if not rows:
        raise CliError(f"no study with Study Instance UID {study_uid!r} has been received")
    files: dict[str, list[Path]] = defaultdict(list)
    for series_uid, relative in rows:
        files[series_uid].append(context.settings.spool_dir / relative)
    decision = route_study(rules, facts_from_files(study_uid, files))
    typer.echo(decision.explain())
    if decision.rule is None:
        typer.echo(f"skipped: {decision.skipped_reason}")
