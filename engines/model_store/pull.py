"""``m3edge models pull``: download the MONAI bundles where the internet is reachable. Never called at run time.

Downloads go through MONAI's bundle downloader (model zoo on GitHub / NGC) into a staging folder, get a manifest,
and are installed with the same verified path as ``models import``. Without internet it fails with a clear
message pointing to ``models import``. The TorchXRayVision ensemble needs a conversion (see
``torchxrayvision_conversion``), so ``pull`` covers it only where torchxrayvision is installed.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from engines.model_store.importer import import_models
from engines.model_store.manifest import write_manifest

__all__ = ["pull_models", "PullUnavailable", "PULLABLE"]

PULLABLE = {"vista3d": "0.5.4", "brats_mri_segmentation": "0.5.2"}
_PROBE = ("github.com", 443)


class PullUnavailable(RuntimeError):
    """No internet (or the download failed); the message says how to install models offline instead."""


def _check_internet(timeout: float) -> None:
    try:
        with socket.create_connection(_PROBE, timeout=timeout):
            pass
    except OSError as exc:
        raise PullUnavailable(
            f"cannot reach {_PROBE[0]} ({exc}): `m3edge models pull` needs the internet. On an air-gapped site, "
            "download the bundles elsewhere and install them with `m3edge models import SRC`"
        ) from exc


def pull_models(models_dir: Path, names: list[str] | None = None, timeout: float = 5.0) -> list[Path]:
    names = names or list(PULLABLE)
    unknown = [name for name in names if name not in PULLABLE]
    if unknown:
        raise ValueError(f"cannot pull {unknown}; pullable: {sorted(PULLABLE)} (CXR: convert with torchxrayvision)")
    _check_internet(timeout)
    from monai.bundle import download

    installed = []
    with tempfile.TemporaryDirectory(prefix="m3edge-pull-") as staging:
        for name in names:
            try:
                download(name=name, version=PULLABLE[name], bundle_dir=staging, source="monaihosting")
            except Exception as exc:  # noqa: BLE001 - MONAI raises assorted network errors; report them all the same way
                raise PullUnavailable(f"downloading {name} {PULLABLE[name]} failed: {exc}") from exc
            write_manifest(Path(staging) / name, name)
            installed.extend(import_models(Path(staging) / name, models_dir))
    return installed
