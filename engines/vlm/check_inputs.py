"""The inputs ``m3edge vlm check`` sends through both backends: a CT slice with its VISTA3D overlay, a chest radiograph
with CXR predictions, and the four sequences of a brain MR with its BraTS overlay.

They are synthetic phantoms (no patient's image), drawn once by the protocol's own renderer (``engines.images``: CT
W400/L50, MRI min-max, the overlay colour cycle) and shipped as small PNGs in ``engines/protocol_data/vlm_check/`` with
``inputs.json`` (the labels drawn, the CXR scores). ``python -m engines.vlm.check_inputs DIR`` draws them again.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["CheckInputs", "load_check_inputs", "write_check_inputs", "PACKAGE_FOLDER"]

PACKAGE_FOLDER = ("protocol_data", "vlm_check")
SEQUENCES = ("T1c", "T1", "T2", "FLAIR")
_IMAGES = ("ct_slice", "ct_overlay", "cxr", *(f"brain_{name}" for name in SEQUENCES), "brain_overlay")


@dataclass(frozen=True)
class CheckInputs:
    images: dict[str, np.ndarray]  # name -> (H, W, 3) uint8, as the model is shown it
    ct_legend: tuple[tuple[str, str], ...]  # (colour, label name) of the CT overlay
    brats_colours: dict[int, str]  # BraTS label -> colour of the brain overlay
    cxr_scores: dict[str, float]


def load_check_inputs() -> CheckInputs:
    from PIL import Image

    folder = resources.files("engines").joinpath(*PACKAGE_FOLDER)
    images = {}
    for name in _IMAGES:
        with folder.joinpath(f"{name}.png").open("rb") as handle:
            images[name] = np.asarray(Image.open(handle).convert("RGB"))
    meta = json.loads(folder.joinpath("inputs.json").read_text(encoding="utf-8"))
    return CheckInputs(
        images=images,
        ct_legend=tuple((colour, name) for colour, name in meta["ct_legend"]),
        brats_colours={int(label): colour for label, colour in meta["brats_colours"].items()},
        cxr_scores={name: float(score) for name, score in meta["cxr_scores"].items()},
    )


def _ct_phantom(side: int = 192, depth: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Body, liver and a lesion in HU on an (X, Y, Z) RAS grid, and the VISTA3D labels (1 liver, 26 hepatic tumor)."""
    x, y = np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side), indexing="ij")
    body = x**2 / 0.8 + y**2 / 0.55 < 1
    liver = ((x + 0.35) ** 2 / 0.12 + (y - 0.05) ** 2 / 0.08) < 1
    lesion = ((x + 0.4) ** 2 + (y - 0.05) ** 2) < 0.012
    hu = np.where(body, 40.0, -1000.0) + np.where(liver, 20.0, 0.0) - np.where(lesion, 45.0, 0.0)
    hu += np.random.default_rng(1).normal(0, 4, hu.shape)
    labels = np.where(lesion, 26, np.where(liver, 1, 0)).astype(np.uint8)
    return np.repeat(hu[:, :, None], depth, axis=2).astype(np.float32), np.repeat(labels[:, :, None], depth, axis=2)


def _brain_phantom(side: int = 160, depth: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """T1c, T1, T2, FLAIR (4, X, Y, Z) and BraTS labels with all three tumour labels on the middle slice."""
    x, y = np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side), indexing="ij")
    brain = x**2 / 0.7 + y**2 / 0.85 < 1
    radius = (x - 0.25) ** 2 + (y + 0.2) ** 2
    edema, core, enhancing = radius < 0.09, radius < 0.035, (radius < 0.035) & (radius > 0.015)
    labels = np.where(enhancing, 4, np.where(core, 1, np.where(edema, 2, 0))).astype(np.uint8)
    contrast = {"T1c": (300, 500, 200, 600), "T1": (300, 250, 180, 250), "T2": (400, 600, 700, 650),
                "FLAIR": (300, 700, 500, 550)}  # brain, edema, core, enhancing
    rng = np.random.default_rng(2)
    sequences = []
    for name in SEQUENCES:
        tissue, swelling, necrosis, rim = contrast[name]
        image = np.where(brain, tissue, 0.0)
        image = np.where(edema, swelling, image)
        image = np.where(core, necrosis, image)
        image = np.where(enhancing, rim, image) + rng.normal(0, 5, image.shape) * brain
        sequences.append(np.repeat(image[:, :, None], depth, axis=2))
    return np.stack(sequences).astype(np.float32), np.repeat(labels[:, :, None], depth, axis=2)


def _cxr_phantom(side: int = 256) -> np.ndarray:
    x, y = np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side), indexing="ij")
    lungs = (((y + 0.45) ** 2 / 0.12 + x**2 / 0.5) < 1) | (((y - 0.45) ** 2 / 0.12 + x**2 / 0.5) < 1)
    image = np.where(lungs, 60.0, 190.0) + 30 * np.exp(-((y - 0.1) ** 2 + (x - 0.2) ** 2) / 0.05)
    image += np.random.default_rng(3).normal(0, 2, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_check_inputs(directory: Path) -> Path:
    """Draw the inputs with the protocol's renderer and write them (PNG + inputs.json) to ``directory``."""
    from PIL import Image

    from engines import images
    from engines.experts.labels import CXR_PATHOLOGIES

    directory.mkdir(parents=True, exist_ok=True)
    affine, middle = np.eye(4), 2
    ct, ct_labels = _ct_phantom()
    brain, brain_labels = _brain_phantom()
    ct_overlay = images.render_overlay(ct, ct_labels, affine, "CT", {1: "liver", 26: "hepatic tumor"}, middle)
    brain_overlay = images.render_overlay(brain[0], brain_labels, affine, "MRI", {1: "1", 2: "2", 4: "4"}, middle)
    drawn = {"ct_slice": images.slice_image(ct, affine, "CT", middle).rgb, "ct_overlay": ct_overlay.rgb,
             "cxr": images.cxr_image(_cxr_phantom()), "brain_overlay": brain_overlay.rgb}
    for name, sequence in zip(SEQUENCES, brain):
        drawn[f"brain_{name}"] = images.slice_image(sequence, affine, "MRI", middle).rgb
    for name, rgb in drawn.items():
        grey = bool((rgb == rgb[:, :, :1]).all())  # a grey slice repeated to RGB is stored as one channel
        Image.fromarray(rgb[:, :, 0] if grey else rgb).save(directory / f"{name}.png", optimize=True)
    scores = {name: round(float(score), 3) for name, score in
              zip(CXR_PATHOLOGIES, np.random.default_rng(4).uniform(0.05, 0.95, len(CXR_PATHOLOGIES)))}
    meta = {"ct_legend": [list(pair) for pair in ct_overlay.legend_pairs],
            "brats_colours": {str(entry.label): entry.color for entry in brain_overlay.entries},
            "cxr_scores": scores}
    (directory / "inputs.json").write_text(json.dumps(meta, indent=1) + "\n")
    return directory


if __name__ == "__main__":
    print(write_check_inputs(Path(sys.argv[1] if len(sys.argv) > 1 else "engines/protocol_data/vlm_check")))
