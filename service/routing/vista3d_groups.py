"""The VISTA3D arguments the model was trained with (keys of the protocol's label-group file)."""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["VISTA3D_ARGUMENTS"]

VISTA3D_ARGUMENTS: tuple[str, ...] = tuple(
    json.loads(resources.files("engines").joinpath("protocol_data/vila_m3_label_groups.json").read_text())
)
