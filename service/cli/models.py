"""``m3edge models demo|import|pull|list`` and ``m3edge engines build``.

Models live in ``M3EDGE_HOME/models`` (layout: ``engines.model_store.layout``); engines in ``M3EDGE_HOME/engines``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from service.cli.context import CliError, cli_context

__all__ = ["models_app", "engines_app"]

models_app = typer.Typer(help="Install and list expert models and VILA-M3 checkpoints.", no_args_is_help=True)
engines_app = typer.Typer(help="Build TensorRT engines ahead of time (workers never build them).", no_args_is_help=True)


@models_app.command("demo")
def demo_command(ctx: typer.Context) -> None:
    """Write tiny random-weight models (VISTA3D, BraTS, CXR, VILA-M3) in the real formats: no download needed."""
    from engines.model_store.demo import write_demo_models

    models_dir = cli_context(ctx).settings.models_dir
    written = write_demo_models(models_dir)
    for name, path in written.items():
        typer.echo(f"demo model {name}: {path}")
    if not any(name.startswith("vila-m3-") for name in written):
        typer.echo("no VILA-M3 demo checkpoint writer is installed (engines.vlm.demo); skipped", err=True)
    typer.echo("DEMO models use random weights: their results are meaningless and say DEMO.")


@models_app.command("import")
def import_command(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="A model folder with manifest.json, or a folder of such folders."),
    torchxrayvision: bool = typer.Option(
        False, "--torchxrayvision", help="Convert the TorchXRayVision weights (needs torchxrayvision) instead."
    ),
) -> None:
    """Install models from a local folder; every file is checked against the manifest's sha256 first."""
    from engines.model_store.importer import ModelImportError, import_models
    from engines.model_store.manifest import ManifestError

    models_dir = cli_context(ctx).settings.models_dir
    try:
        if torchxrayvision:
            from engines.model_store.torchxrayvision_conversion import TorchXRayVisionMissing, convert_torchxrayvision

            try:
                installed = [convert_torchxrayvision(models_dir / "cxr", weights_dir=source)]
            except TorchXRayVisionMissing as exc:
                raise CliError(str(exc)) from exc
        else:
            installed = import_models(source, models_dir)
    except (ManifestError, ModelImportError) as exc:
        raise CliError(f"import refused: {exc}") from exc
    for path in installed:
        typer.echo(f"installed {path.name}: {path}")


@models_app.command("pull")
def pull_command(
    ctx: typer.Context,
    name: list[str] = typer.Argument(None, help="Bundles to download (default: vista3d brats_mri_segmentation)."),
) -> None:
    """Download the MONAI bundles where the internet is reachable (never done at run time)."""
    from engines.model_store.pull import PullUnavailable, pull_models

    try:
        installed = pull_models(cli_context(ctx).settings.models_dir, name or None)
    except (PullUnavailable, ValueError) as exc:
        raise CliError(str(exc)) from exc
    for path in installed:
        typer.echo(f"installed {path.name}: {path}")


@models_app.command("list")
def list_command(ctx: typer.Context) -> None:
    """What is installed (version, DEMO or not) and which TensorRT engines are built."""
    from rich.console import Console
    from rich.table import Table

    from engines.backends import EngineCache
    from engines.model_store.layout import ModelsDirectory

    settings = cli_context(ctx).settings
    installed = ModelsDirectory(settings.models_dir).installed()
    engines = EngineCache(settings.engines_dir).entries()
    console = Console(width=160)
    if not installed:
        console.print(f"no models in {settings.models_dir}; run `m3edge models demo` or `m3edge models import SRC`")
    table = Table("model", "version", "demo", "files", "engines built")
    for model in installed:
        prefix = {"vista3d": "vista3d.", "brats_mri_segmentation": "brats", "cxr": "cxr."}.get(model.folder, "\0")
        built = [f"{e['network']} {e['precision']} TRT {e['tensorrt_version']} sm{e['compute_capability']}"
                 for e in engines if e["network"].startswith(prefix)]
        table.add_row(model.folder, model.version, "DEMO" if model.demo else "", str(model.files), "\n".join(built) or "-")
    console.print(table)


@engines_app.command("build")
def build_command(
    ctx: typer.Context,
    precision: str = typer.Option("fp16", help="fp32, fp16 or bf16."),
) -> None:
    """Build (or keep, when cached and healthy) the TensorRT engine of every installed expert network."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from engines.backends import BackendUnavailable, EngineCache, Precision
    from engines.backends.tensorrt import TensorRTRuntime, build_tensorrt_engine
    from engines.experts.networks import installed_networks

    settings = cli_context(ctx).settings
    try:
        chosen = Precision(precision)
    except ValueError as exc:
        raise CliError(f"unknown precision {precision!r}; one of fp32, fp16, bf16") from exc
    networks = installed_networks(settings.models_dir)
    if not networks:
        raise CliError(f"no models in {settings.models_dir}; run `m3edge models demo` or `m3edge models import SRC`")
    try:
        runtime = TensorRTRuntime.detect()
    except BackendUnavailable as exc:
        raise CliError(f"cannot build engines here: {exc}") from exc
    cache = EngineCache(settings.engines_dir)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task(f"TensorRT {runtime.version} sm{runtime.compute_capability}", total=len(networks))
        for network in networks:
            progress.update(task, description=f"building {network.name} ({chosen.value})")
            try:
                key, built = build_tensorrt_engine(network, cache, chosen, runtime)
            except (BackendUnavailable, RuntimeError) as exc:
                raise CliError(f"{network.name}: {exc}") from exc
            progress.console.print(f"{network.name}: {'built' if built else 'cached'} {cache.path_for(key)}")
            progress.advance(task)
