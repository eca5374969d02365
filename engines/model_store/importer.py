"""``m3edge models import SRC``: install models from a local folder (air-gapped sites), checksums verified.

``SRC`` is either one model folder (``vista3d/``, ``brats_mri_segmentation/``, ``cxr/``, ``vila-m3-*/``) or a folder
holding several. Each model folder must carry a ``manifest.json`` with the sha256 of every file; every file is
checked before anything is installed, the copy is staged beside the models directory and renamed into place, so a
failed import leaves the installed model untouched. A MONAI bundle imported without m3edge's ONNX export gets
one made after the copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from engines.model_store.layout import EXPERT_FOLDERS
from engines.model_store.manifest import MANIFEST_NAME, ManifestError, verify_manifest, write_manifest

__all__ = ["import_models", "ModelImportError"]

logger = logging.getLogger(__name__)

_KNOWN = set(EXPERT_FOLDERS.values())


class ModelImportError(ValueError):
    """The source folder holds nothing importable; the message says what was expected."""


def _model_folders(source: Path) -> list[Path]:
    if (source / MANIFEST_NAME).is_file():
        return [source]
    folders = [path for path in sorted(source.iterdir()) if path.is_dir() and (path / MANIFEST_NAME).is_file()]
    if not folders:
        raise ModelImportError(
            f"{source} has no manifest.json and no sub-folder with one; expected model folders "
            f"({', '.join(sorted(_KNOWN))}, vila-m3-*) each with a manifest.json of sha256 sums"
        )
    return folders


def _target_name(folder: Path, manifest: dict) -> str:
    name = str(manifest.get("name") or folder.name)
    if name not in _KNOWN and not name.startswith("vila-m3-"):
        raise ModelImportError(f"{folder}: model name {name!r} is not one of {sorted(_KNOWN)} or vila-m3-*")
    return name


def import_models(source: Path, models_dir: Path) -> list[Path]:
    """Verify every model folder under ``source`` first, then install each; return the installed paths."""
    source = Path(source)
    if not source.is_dir():
        raise ModelImportError(f"{source} is not a folder")
    plan = []
    for folder in _model_folders(source):
        manifest = verify_manifest(folder)  # ManifestError names the first bad file
        plan.append((folder, _target_name(folder, manifest), manifest))
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    installed = []
    for folder, name, manifest in plan:
        staging = Path(tempfile.mkdtemp(prefix=f".import-{name}-", dir=models_dir))
        try:
            for relative in manifest["files"]:
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(folder / relative, target)
            shutil.copy2(folder / MANIFEST_NAME, staging / MANIFEST_NAME)
            verify_manifest(staging)
            _complete_exports(staging, name)
            destination = models_dir / name
            if destination.exists():
                retired = models_dir / f".retired-{name}"
                shutil.rmtree(retired, ignore_errors=True)
                os.replace(destination, retired)
                shutil.rmtree(retired, ignore_errors=True)
            os.replace(staging, destination)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("imported %s from %s (%d files verified)", name, folder, len(manifest["files"]))
        installed.append(destination)
    return installed


def _complete_exports(folder: Path, name: str) -> None:
    """Bundles from the model zoo have no ONNX export: make it, and add it to the manifest."""
    from engines.model_store.bundle_exports import export_brats_network, export_vista3d_encoder

    if name == "vista3d" and not (folder / "models" / "image_encoder.encoder.onnx").is_file():
        export_vista3d_encoder(folder)
        write_manifest(folder, name)
    elif name == "brats_mri_segmentation" and not (folder / "models" / "model.onnx").is_file():
        export_brats_network(folder)
        write_manifest(folder, name)
    elif name == "cxr" and not (folder / "ensemble.json").is_file():
        raise ManifestError(f"{folder} has no ensemble.json; convert TorchXRayVision weights with `m3edge models import --torchxrayvision`")
