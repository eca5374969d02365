"""``m3edge doctor``: is this installation ready? Configuration, database, broker, spool, file modes, GPU, models,
rules, peers."""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass

import typer

from service.cli.context import cli_context
from service.config import Settings

__all__ = ["doctor_command", "Check", "Verdict", "run_checks"]


class Verdict(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str


def _database(settings: Settings, session_factory) -> Check:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from service.db.migrate import alembic_config

    try:
        head = ScriptDirectory.from_config(alembic_config(settings.effective_database_url)).get_current_head()
        with session_factory() as session:
            current = MigrationContext.configure(session.connection()).get_current_revision()
    except Exception as exc:  # any driver error is the finding
        return Check("database", Verdict.FAIL, f"{settings.effective_database_url.partition(':')[0]}: {exc.__class__.__name__}")
    if current != head:
        return Check("database", Verdict.FAIL, f"at revision {current or 'none'}, not {head}: run `m3edge db upgrade`")
    return Check("database", Verdict.OK, f"{settings.effective_database_url.partition(':')[0]} at revision {head}")


def _broker(settings: Settings) -> Check:
    from service.composition import build_celery

    try:
        app = build_celery(settings)
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        return Check("broker", Verdict.FAIL, f"unreachable: {exc.__class__.__name__}: {exc}"[:200])
    kind = "embedded (SQLite file)" if settings.broker_url is None else settings.broker_url.partition(":")[0]
    return Check("broker", Verdict.OK, kind)


def _spool(settings: Settings) -> Check:
    from dicom_node.private_files import make_private_dirs

    from dicom_node.intake.admission import DiskUsage
    from service.home_files import spool_refusal

    spool = make_private_dirs(settings.spool_dir)
    detail = f"{spool}: {DiskUsage.of(spool).describe()}"
    if spool_refusal(settings) is not None:
        return Check("spool", Verdict.FAIL, detail + " (new associations are refused)")
    return Check("spool", Verdict.OK, detail)


def _file_modes(settings: Settings) -> Check:
    from service.home_files import loose_entries

    loose = loose_entries(settings)
    if not loose:
        return Check("file modes", Verdict.OK, f"{settings.home}: patient data and secrets 0640/0750 at most")
    shown = ", ".join(map(str, loose[:5])) + (f" and {len(loose) - 5} more" if len(loose) > 5 else "")
    return Check("file modes", Verdict.WARN, f"readable by more than the service's user and group: {shown} "
                 "(chmod o-rwx,g-w them; m3edge creates files 0640 and folders 0750)")


def _dicom_node(settings: Settings) -> Check:
    """Whether the DICOM node beside this HOME accepts: its published status, then a C-ECHO to it from loopback with
    our own AE title (the health check every allowlist lets through: ``dicom_node.scp.access``)."""
    from dicom_node.network import DicomAddress
    from dicom_node.scp.status import NodeStatusFile
    from dicom_node.scu import DeliveryError, RetryPolicy, StorageSCU

    status = NodeStatusFile(settings.dicom_status_file).read()
    if status is None:
        return Check("DICOM node", Verdict.WARN, "not running beside this HOME (start 'm3edge scp' or 'm3edge serve')")
    problem = status.problem()
    if problem is not None:
        return Check("DICOM node", Verdict.FAIL, problem)
    if settings.dicom_tls is not None or not settings.dicom_port:
        return Check("DICOM node", Verdict.OK, status.describe())
    own = DicomAddress(settings.dicom_ae_title, "127.0.0.1", settings.dicom_port)
    try:
        seconds = StorageSCU(settings.dicom_ae_title, retry=RetryPolicy(attempts=1), connection_timeout=5).echo(own)
    except DeliveryError as exc:
        return Check("DICOM node", Verdict.FAIL, f"{status.describe()}, but C-ECHO to it failed: {exc}"[:300])
    return Check("DICOM node", Verdict.OK, f"{status.describe()}; C-ECHO answered in {seconds * 1000:.0f} ms")


def _gpu() -> Check:
    try:
        import torch
    except ImportError:
        return Check("gpu", Verdict.WARN, "PyTorch is not installed")
    if not torch.cuda.is_available():
        return Check("gpu", Verdict.WARN, "no CUDA GPU: experts run on ONNX Runtime (CPU), VILA-M3 on the CPU")
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    try:
        import tensorrt  # noqa: F401

        trt = "TensorRT present"
    except ImportError:
        trt = "no TensorRT (torch fallback)"
    return Check("gpu", Verdict.OK, f"{names}; {trt}")


def _models(settings: Settings) -> Check:
    from engines.model_store.layout import ModelsDirectory

    installed = ModelsDirectory(settings.models_dir).installed()
    if not installed:
        return Check("models", Verdict.WARN, f"none in {settings.models_dir} (`m3edge models demo` or `models import`)")
    demo = [m.folder for m in installed if m.demo]
    detail = ", ".join(f"{m.folder} {m.version}" for m in installed)
    if demo:
        return Check("models", Verdict.WARN, f"{detail}; DEMO weights: {', '.join(demo)}")
    return Check("models", Verdict.OK, detail)


def _rules(settings: Settings) -> Check:
    from service.routing import RoutingRulesError
    from service.routing.store import RoutingRulesStore

    store = RoutingRulesStore(settings)
    try:
        rules = store.load()
    except RoutingRulesError as exc:
        return Check("routing rules", Verdict.FAIL, str(exc).replace("\n", " "))
    return Check("routing rules", Verdict.OK, f"{len(rules.rules)} rules from {store.describe()}")


def _destinations(settings: Settings) -> list[Check]:
    from dicom_node.scu import DeliveryError, RetryPolicy, StorageSCU
    from service.destinations import DestinationsStore

    destinations = DestinationsStore(settings).load()
    if not destinations:
        return [Check("destinations", Verdict.WARN, "none configured: results stay here (set DESTINATIONS)")]
    scu = StorageSCU(settings.dicom_ae_title, retry=RetryPolicy(attempts=1), connection_timeout=5)
    checks = []
    for destination in destinations:
        try:
            seconds = scu.echo(destination)
            checks.append(Check(f"C-ECHO {destination}", Verdict.OK, f"{seconds * 1000:.0f} ms"))
        except DeliveryError as exc:
            checks.append(Check(f"C-ECHO {destination}", Verdict.FAIL, str(exc)[:200]))
    return checks


def _configuration(settings: Settings) -> Check:
    from service.composition import stage_time_limits
    from service.config import ConfigurationError

    try:
        stage_time_limits(settings)
    except ConfigurationError as exc:
        return Check("configuration", Verdict.FAIL, str(exc))
    access = ", ".join(map(str, settings.dicom_allowed_aes)) or "loopback callers only"
    source = os.environ.get("M3EDGE_CONFIG")
    return Check("configuration", Verdict.OK,
                 f"AE {settings.dicom_ae_title} on {settings.dicom_host}:{settings.dicom_port}; access: {access}; "
                 f"HOME {settings.home.resolve()}; from {'M3EDGE_CONFIG=' + source + ' and ' if source else ''}"
                 "the M3EDGE_* environment")


def _user() -> Check:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Check("user", Verdict.WARN, "running as root: run m3edge as an unprivileged user (the image does)")
    return Check("user", Verdict.OK, "not root")


def run_checks(settings: Settings, session_factory) -> list[Check]:
    checks = [_configuration(settings), _user()]
    probes: list[Callable[[], Check | list[Check]]] = [
        lambda: _database(settings, session_factory), lambda: _broker(settings), lambda: _spool(settings),
        lambda: _file_modes(settings), lambda: _dicom_node(settings), _gpu,
        lambda: _models(settings), lambda: _rules(settings), lambda: _destinations(settings),
    ]
    for probe in probes:
        result = probe()
        checks.extend(result if isinstance(result, list) else [result])
    return checks


def doctor_command(ctx: typer.Context) -> None:
    """Check the configuration, database, broker, spool, file modes under HOME, DICOM node, GPU, models, routing
    rules and C-ECHO every destination.

    Exit status 1 when any check fails."""
    context = cli_context(ctx)
    checks = run_checks(context.settings, context.session_factory)
    width = max(len(c.name) for c in checks)
    for check in checks:
        typer.echo(f"{check.verdict.value:<4}  {check.name:<{width}}  {check.detail}")
    if any(c.verdict is Verdict.FAIL for c in checks):
        raise typer.Exit(1)
