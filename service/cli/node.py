"""``m3edge scp`` and ``m3edge serve``: the DICOM node, alone or with everything else in one process."""

from __future__ import annotations

import typer

__all__ = ["node_commands"]


def node_commands(app: typer.Typer) -> None:
    """Registered by the DICOM-node work (issue 2): ``scp`` and ``serve``."""
