"""``manifest.json``: every file of an installed model with its sha256, written on install, checked on import.

Format: ``{"name": "vista3d", "files": {"configs/inference.json": "<sha256>", ...}}`` with paths relative to the
model's directory, ``/``-separated. The manifest itself is not listed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from engines.backends.engine_cache import file_sha256

__all__ = ["MANIFEST_NAME", "ManifestError", "write_manifest", "read_manifest", "verify_manifest", "folder_digest"]

MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """A manifest is missing, malformed, or a file does not match it; the message names the file."""


def write_manifest(directory: Path, name: str) -> Path:
    files = {
        path.relative_to(directory).as_posix(): file_sha256(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME and not path.name.startswith(".")
    }
    target = directory / MANIFEST_NAME
    target.write_text(json.dumps({"name": name, "files": files}, indent=2) + "\n", encoding="utf-8")
    return target


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path} is missing: every imported model folder needs a manifest.json with sha256 sums")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise ManifestError(f"{path} lists no files (expected {{'name': ..., 'files': {{path: sha256}}}})")
    return manifest


def verify_manifest(directory: Path) -> dict:
    """Check every listed file exists, stays inside ``directory`` and has its sha256; return the manifest."""
    manifest = read_manifest(directory)
    root = directory.resolve()
    for relative, expected in manifest["files"].items():
        path = (directory / relative).resolve()
        if root not in path.parents:
            raise ManifestError(f"{directory / MANIFEST_NAME} lists {relative!r}, which is outside the model folder")
        if not path.is_file():
            raise ManifestError(f"{relative} is listed in {directory / MANIFEST_NAME} but missing")
        actual = file_sha256(path)
        if actual != str(expected).lower():
            raise ManifestError(f"checksum mismatch for {relative}: manifest says {expected}, file has {actual}")
    return manifest


def folder_digest(folder: Path) -> str:
    """A digest that changes whenever a model's files change: sha256 of its manifest (which lists every file's
    sha256), or of the folder's file names and sizes when it has none."""
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        return "sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    listing = sorted(f"{p.relative_to(folder)}:{p.stat().st_size}" for p in folder.rglob("*") if p.is_file())
    return "files-sha256:" + hashlib.sha256("\n".join(listing).encode()).hexdigest()
