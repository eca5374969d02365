"""The models directory: layout, demo models, import with checksum verification, pull, and what is installed."""

from engines.model_store.layout import EXPERT_FOLDERS, InstalledModel, ModelsDirectory
from engines.model_store.manifest import ManifestError, verify_manifest, write_manifest

__all__ = ["EXPERT_FOLDERS", "InstalledModel", "ManifestError", "ModelsDirectory", "verify_manifest", "write_manifest"]
