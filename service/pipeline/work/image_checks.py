"""Checks that an expert's input looks like what its route expects, made in ``prepare`` before any model runs.

A check returns None when the input may go on, else why not; a refused input ends the study ``skipped`` with that
reason, like a study no routing rule takes. ``PrepareStage`` runs ``DEFAULT_IMAGE_CHECKS`` unless given others.

Only an honest check belongs here. A learned one (is this a frontal chest radiograph? TorchXRayVision ships an
autoencoder for out-of-distribution detection) needs its weights validated on real images, and neither the weights nor
``torchxrayvision`` can run on the CPU path of this project: it is not built. Such a check plugs in here, as an
``ImageCheck`` passed to ``PrepareStage``, once a site can show what it refuses and what it lets through.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["ImageCheck", "BlankImageCheck", "DEFAULT_IMAGE_CHECKS"]


class ImageCheck(Protocol):
    def __call__(self, expert: str, image: np.ndarray) -> str | None:
        """None when ``image`` (the expert's input array) may go to ``expert``, else the reason it may not."""


class BlankImageCheck:
    """Refuses an input that holds a single value (a blank export, an unexposed plate): there is nothing to read,
    and a model would still answer. Looks at every ``stride``-th voxel along each axis, so it costs little."""

    def __init__(self, stride: int = 4) -> None:
        self.stride = stride

    def __call__(self, expert: str, image: np.ndarray) -> str | None:
        sample = np.asarray(image)[tuple(slice(None, None, self.stride) for _ in range(np.ndim(image)))]
        if sample.size and float(np.max(sample)) == float(np.min(sample)):
            return (f"not routable: the {expert} input holds one value only ({float(np.min(sample)):g}): the image "
                    "is blank")
        return None


DEFAULT_IMAGE_CHECKS: tuple[ImageCheck, ...] = (BlankImageCheck(),)
