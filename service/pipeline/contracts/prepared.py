"""Stage ``prepare``'s result: ``PreparedInput``, the expert's input arrays (an ``.npz``) and the images behind them."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from engines.experts.base import ExpertName
from service.pipeline.contracts.base import StageContract
from service.pipeline.stages import Stage

__all__ = ["PreparedInput"]


class PreparedInput(StageContract):
    """``input``: the ``.npz`` holding ``volume`` (what the expert takes: (X, Y, Z) HU for VISTA3D, (4, X, Y, Z) on
    one 1 mm RAS grid for BraTS, (H, W) uint8 for CXR) and, for volumes, its ``affine`` (voxel -> RAS mm).
    ``source_instances``: the files of the series the results are written against (the SEG's frames, the overlay's
    source); ``other_evidence``: further series analysed (the BraTS sequences other than the T1c).
    ``sequences`` (BraTS: sequence name -> Series Instance UID) and ``view_position`` (CXR) say what was chosen."""

    STAGE: ClassVar[Stage] = Stage.PREPARE

    expert: ExpertName
    input: str
    source_series: str
    source_instances: list[str] = Field(min_length=1)
    other_evidence: list[str] = Field(default_factory=list)
    shape: list[int] = Field(min_length=2, max_length=4)
    sequences: dict[str, str] | None = None
    view_position: str | None = None

    def arrays(self, *names: str) -> dict[str, np.ndarray]:
        """The saved arrays (only ``names`` when given: a CT volume is large)."""
        from service.pipeline.work.resources import load_arrays

        return load_arrays(self.input, *names)

    def expert_input(self):
        """The ``engines.experts.ExpertInput`` an expert (and the agent) takes."""
        from engines.experts import ExpertInput

        arrays = self.arrays()
        return ExpertInput(arrays["volume"], arrays.get("affine"))
