"""``m3edge echo`` and ``m3edge send``: check a DICOM destination and send files to it, as the service would."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from service.cli.context import CliError, cli_context

__all__ = ["peer_commands"]


def _addresses(texts: list[str] | None, configured: list) -> list:
    from dicom_node.network import DicomAddress

    if not texts:
        if not configured:
            raise CliError("no destination given and M3EDGE_DESTINATIONS is empty; pass one as AE@host:port")
        return list(configured)
    try:
        return [DicomAddress.parse(text) for text in texts]
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        else:
            raise CliError(f"{path} is neither a file nor a folder")
    if not files:
        raise CliError("no files to send")
    return files


def echo_command(
    ctx: typer.Context,
    destinations: list[str] = typer.Argument(None, help="AE@host:port; every configured DESTINATION when omitted."),
    timeout: float = typer.Option(10.0, min=0.1, help="Seconds to wait for the connection and each answer."),
) -> None:
    """C-ECHO DICOM peers with our AE title (DICOM_AE_TITLE); exit status 1 if any does not answer."""
    from dicom_node.scu import DeliveryError, StorageSCU

    settings = cli_context(ctx).settings
    scu = StorageSCU(settings.dicom_ae_title, connection_timeout=timeout, acse_timeout=timeout, dimse_timeout=timeout)
    failures = 0
    for address in _addresses(destinations, settings.destinations):
        try:
            seconds = scu.echo(address)
        except DeliveryError as exc:
            failures += 1
            typer.echo(f"{address}: FAILED: {exc}")
        else:
            typer.echo(f"{address}: ok ({seconds * 1000:.0f} ms)")
    if failures:
        raise typer.Exit(1)


def send_command(
    ctx: typer.Context,
    destination: str = typer.Argument(..., help="AE@host:port of the Storage SCP."),
    paths: list[Path] = typer.Argument(..., help="DICOM files, or folders searched recursively."),
    attempts: int = typer.Option(5, min=1, help="Tries per instance before giving up."),
    first_delay: float = typer.Option(1.0, min=0, help="Seconds before the first retry; doubled each time."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per instance instead of text."),
) -> None:
    """C-STORE files to a destination over one association, with retries; exit status 1 if any instance failed."""
    from dicom_node.scu import DeliveryError, RetryPolicy, StorageSCU

    settings = cli_context(ctx).settings
    [address] = _addresses([destination], [])
    scu = StorageSCU(settings.dicom_ae_title, retry=RetryPolicy(attempts=attempts, first_delay=first_delay))
    try:
        report = scu.send(address, _files(paths))
    except DeliveryError as exc:
        raise CliError(str(exc)) from exc
    for outcome in report.outcomes:
        status = None if outcome.status is None else f"0x{outcome.status:04X}"
        if as_json:
            typer.echo(json.dumps({
                "path": str(outcome.path), "sop_instance_uid": outcome.sop_instance_uid, "status": status,
                "delivered": outcome.delivered, "attempts": outcome.attempts, "error": outcome.error,
            }))
        else:
            verdict = "ok" if outcome.delivered else f"FAILED: {outcome.error}"
            typer.echo(f"{outcome.path}  {outcome.sop_instance_uid or '-'}  {status or '-'}  {verdict}")
    if not as_json:
        typer.echo(f"{len(report.delivered)} of {len(report.outcomes)} delivered to {address}")
    if report.failed:
        raise typer.Exit(1)


def peer_commands(app: typer.Typer) -> None:
    app.command("echo")(echo_command)
    app.command("send")(send_command)
