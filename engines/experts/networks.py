"""Every network the installed experts run, as ``NetworkArtifacts``: what ``m3edge engines build`` builds."""

from __future__ import annotations

from pathlib import Path

from engines.backends import NetworkArtifacts

__all__ = ["installed_networks"]


def installed_networks(models_dir: Path) -> list[NetworkArtifacts]:
    """VISTA3D's encoder, the BraTS SegResNet and the eight CXR networks, for those installed."""
    from engines.experts.brats import brats_artifacts
    from engines.experts.bundle import MonaiBundle
    from engines.experts.cxr import cxr_artifacts, read_ensemble
    from engines.experts.vista3d import vista3d_encoder_artifacts
    from engines.model_store.layout import ModelsDirectory

    layout = ModelsDirectory(Path(models_dir))
    networks = []
    if (layout.vista3d / "configs" / "inference.json").is_file():
        networks.append(vista3d_encoder_artifacts(MonaiBundle(layout.vista3d)))
    if (layout.brats / "configs" / "inference.json").is_file():
        networks.append(brats_artifacts(MonaiBundle(layout.brats)))
    if (layout.cxr / "ensemble.json").is_file():
        _ensemble, entries = read_ensemble(layout.cxr)
        networks.extend(cxr_artifacts(entry) for entry in entries)
    return networks
