"""``m3edge users``: people who use the review API and the dashboard."""

from __future__ import annotations

import typer

from service.cli.context import CliError, cli_context
from service.db.models import Role

__all__ = ["users_app"]

users_app = typer.Typer(help="Manage users, their roles and API tokens.", no_args_is_help=True)


@users_app.command("add")
def add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Login name."),
    role: Role = typer.Option(..., "--role", help="admin or reviewer."),
    display_name: str = typer.Option("", help="Full name, as the verifying observer of signed reports."),
    organisation: str = typer.Option("", help="Organisation, as the verifying organisation of signed reports."),
    password: bool = typer.Option(False, "--password", help="Also set a dashboard password (asked for, not echoed)."),
) -> None:
    """Create a user and print its API token once (it is stored hashed and cannot be shown again)."""
    from service.db.session import session_scope
    from service.security import UserExists, add_user
    from service.cli.startup import prepare_database

    secret = typer.prompt("Password", hide_input=True, confirmation_prompt=True) if password else None
    context = cli_context(ctx)
    prepare_database(context.settings)
    try:
        with session_scope(context.session_factory) as session:
            _, token = add_user(session, name, role, display_name=display_name, organisation=organisation,
                                password=secret)
    except (UserExists, ValueError) as exc:
        raise CliError(str(exc)) from exc
    typer.echo(f"user {name} ({role.value}) created; API token (shown once):")
    typer.echo(token)


@users_app.command("token")
def token(ctx: typer.Context, name: str = typer.Argument(...), label: str = typer.Option("", help="What it is for.")) -> None:
    """Issue another API token for a user and print it once."""
    from sqlalchemy import select

    from service.db.models import User
    from service.db.session import session_scope
    from service.security import issue_token

    with session_scope(cli_context(ctx).session_factory) as session:
        user = session.execute(select(User).where(User.name == name)).scalar_one_or_none()
        if user is None:
            raise CliError(f"no user {name!r}")
        value = issue_token(session, user, label)
    typer.echo(value)


def _change_account(ctx: typer.Context, action: str, name: str, password: str = ""):
    """Apply the change and audit it (actor ``cli``); returns what it ended."""
    from service.db.session import session_scope
    from service.security import UnknownUser, change_account

    try:
        with session_scope(cli_context(ctx).session_factory) as session:
            return change_account(session, "cli", action, name, password=password)
    except (UnknownUser, ValueError) as exc:
        raise CliError(str(exc)) from exc


@users_app.command("disable")
def disable(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Disable a user: revoke every API token and end every dashboard session at once (audited)."""
    result = _change_account(ctx, "admin.user.disable", name)
    typer.echo(f"user {name} disabled: {result.tokens_revoked} token(s) revoked, {result.sessions_ended} "
               "session(s) ended")


@users_app.command("enable")
def enable(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Enable a disabled user (old tokens and sessions stay ended: `users token` issues a new token)."""
    _change_account(ctx, "admin.user.enable", name)
    typer.echo(f"user {name} enabled")


@users_app.command("password")
def password(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Set a user's dashboard password (asked for twice, not echoed; at least 10 characters) and end every dashboard
    session of that user (audited)."""
    secret = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    result = _change_account(ctx, "admin.user.password", name, secret)
    typer.echo(f"password of {name} set; {result.sessions_ended} session(s) ended")


@users_app.command("revoke")
def revoke(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Revoke every API token of a user (dashboard sessions stay: `users disable` ends both)."""
    from service.db.session import session_scope
    from service.security import UnknownUser, record_audit, revoke_tokens

    try:
        with session_scope(cli_context(ctx).session_factory) as session:
            count = revoke_tokens(session, name)
            record_audit(session, "cli", "admin.user.revoke_tokens", target=name, detail={"revoked": count})
    except UnknownUser as exc:
        raise CliError(str(exc)) from exc
    typer.echo(f"{count} token(s) of {name} revoked")


@users_app.command("list")
def list_users(ctx: typer.Context) -> None:
    """Users, roles and how many active tokens each has."""
    from sqlalchemy import select

    from service.db.models import User
    from service.db.session import session_scope

    with session_scope(cli_context(ctx).session_factory) as session:
        for user in session.execute(select(User).order_by(User.name)).scalars():
            active = sum(1 for t in user.tokens if t.revoked_at is None)
            typer.echo(f"{user.name:<24} {user.role.value:<9} {active} token(s){'  DISABLED' if user.disabled else ''}")
