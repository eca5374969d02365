"""Label tables of the three experts, exactly as the protocol (section 7) and its data files give them.

- VISTA3D: the 133 output channels (``protocol_data/vista3d_labels.json``, bundle v0.5.4 metadata), the argument
  groups the model names in ``<VISTA3D(argument)>`` (``protocol_data/vila_m3_label_groups.json``), the bundle's
  ``everything`` set and its ``subclass`` expansion of label prompts (inference.json).
- BraTS: output channels TC, WT, ET and the label values 1 (TC), 2 (edema), 4 (ET).
- CXR: TorchXRayVision's ``default_pathologies`` (18, in its order), the eight models, and the per-pathology model
  subsets the VILA-M3 training data used.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

__all__ = [
    "VISTA3D_EVERYTHING_EXCLUDED",
    "VISTA3D_SUBCLASSES",
    "vista3d_label_names",
    "vista3d_argument_groups",
    "vista3d_label_prompt",
    "BRATS_INPUT_ORDER",
    "BRATS_CHANNELS",
    "BRATS_LABELS",
    "CXR_PATHOLOGIES",
    "CXR_MODELS",
    "CXR_MODEL_RESOLUTION",
    "CXR_PATHOLOGY_GROUPS",
    "CXR_MODEL_PATHOLOGIES",
]

# -- VISTA3D ----------------------------------------------------------------------------------------------------------

VISTA3D_EVERYTHING_EXCLUDED = frozenset({2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132})

# The bundle's "subclass": a prompt for a parent class is replaced by its parts (kidney, lung, bone).
VISTA3D_SUBCLASSES: dict[int, tuple[int, ...]] = {
    2: (14, 5),
    20: (28, 29, 30, 31, 32),
    21: tuple(range(33, 57)) + tuple(range(63, 98)) + (114, 120, 122),
}


def _protocol_json(name: str) -> dict:
    return json.loads(resources.files("engines.protocol_data").joinpath(name).read_text(encoding="utf-8"))


@cache
def vista3d_label_names() -> dict[int, str]:
    """VISTA3D class id -> name, 0..132 (0 is background)."""
    channels = _protocol_json("vista3d_labels.json")["channel_def"]
    return {int(key): value for key, value in channels.items()}


@cache
def vista3d_argument_groups() -> dict[str, tuple[int, ...]]:
    """Argument -> VISTA3D ids, in the file's order; ``everything`` is ids 1..132 minus the excluded set."""
    groups: dict[str, tuple[int, ...]] = {}
    for argument, members in _protocol_json("vila_m3_label_groups.json").items():
        if argument == "everything":
            groups[argument] = tuple(i for i in range(1, 133) if i not in VISTA3D_EVERYTHING_EXCLUDED)
        else:
            groups[argument] = tuple(int(value) for value in members.values())
    return groups


def vista3d_label_prompt(argument: str | None) -> tuple[int, ...]:
    """The class prompts for ``<VISTA3D(argument)>``: empty/None means ``everything``; subclasses expanded.

    An unknown argument raises ``ValueError`` naming the valid ones. Duplicates left by the expansion are dropped
    (keeping the first): the bundle keeps them, but identical channels give the same argmax label.
    """
    key = (argument or "").strip() or "everything"
    groups = vista3d_argument_groups()
    if key not in groups:
        raise ValueError(f"unknown VISTA3D argument {argument!r}; valid arguments: {', '.join(sorted(groups))}")
    prompt: list[int] = []
    for label in groups[key]:
        for expanded in VISTA3D_SUBCLASSES.get(label, (label,)):
            if expanded not in prompt:
                prompt.append(expanded)
    return tuple(prompt)


# -- BraTS ------------------------------------------------------------------------------------------------------------

# The bundle's metadata ("image_classes": "4 channel data, T1c, T1, T2, FLAIR"). The reference demo stacks
# T1 before T1c, i.e. swaps the first two channels relative to the bundle; we follow the bundle.
BRATS_INPUT_ORDER = ("T1c", "T1", "T2", "FLAIR")
BRATS_CHANNELS = ("TC", "WT", "ET")  # output channel 0, 1, 2 (tumour core, whole tumour, enhancing tumour)
BRATS_LABELS = {1: "tumor core", 2: "edema", 4: "enhancing tumor"}

# -- CXR --------------------------------------------------------------------------------------------------------------

# torchxrayvision.datasets.default_pathologies, in its order.
CXR_PATHOLOGIES = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)

CXR_MODELS = (
    "densenet121-res224-all",
    "densenet121-res224-chex",
    "densenet121-res224-mimic_ch",
    "densenet121-res224-mimic_nb",
    "densenet121-res224-nih",
    "densenet121-res224-pc",
    "densenet121-res224-rsna",
    "resnet50-res512-all",
)
CXR_MODEL_RESOLUTION = {name: (512 if name.startswith("resnet50") else 224) for name in CXR_MODELS}

_GROUP_RESNET = ("resnet50-res512-all",)
_GROUP_ALL = (
    "densenet121-res224-all",
    "densenet121-res224-nih",
    "densenet121-res224-chex",
    "densenet121-res224-mimic_ch",
    "densenet121-res224-mimic_nb",
    "densenet121-res224-rsna",
    "densenet121-res224-pc",
    "resnet50-res512-all",
)
_GROUP_CHEX_PC = ("densenet121-res224-all", "densenet121-res224-chex", "densenet121-res224-pc", "resnet50-res512-all")
_GROUP_NIH_CHEX = ("densenet121-res224-all", "densenet121-res224-nih", "densenet121-res224-chex", "resnet50-res512-all")

# The model subsets VILA-M3's CXR training data used for eight pathologies (the other ten use every model that
# predicts them). Within a subset only the models whose pathology list has the pathology count.
CXR_PATHOLOGY_GROUPS: dict[str, tuple[str, ...]] = {
    "Fracture": _GROUP_NIH_CHEX,
    "Pneumothorax": _GROUP_RESNET,
    "Lung Opacity": _GROUP_ALL,
    "Atelectasis": _GROUP_CHEX_PC,
    "Cardiomegaly": _GROUP_CHEX_PC,
    "Consolidation": _GROUP_CHEX_PC,
    "Edema": _GROUP_CHEX_PC,
    "Effusion": _GROUP_CHEX_PC,
}


def _aligned(*names: str) -> tuple[str, ...]:
    """A model's output list in TorchXRayVision's form: 18 entries aligned to CXR_PATHOLOGIES, "" where absent."""
    return tuple(name if name in names else "" for name in CXR_PATHOLOGIES)


_CHEX_STYLE = _aligned(
    "Atelectasis", "Consolidation", "Pneumothorax", "Edema", "Effusion", "Pneumonia", "Cardiomegaly",
    "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)  # fmt: skip

# Each model's ``pathologies`` (TorchXRayVision's model_urls[...]["labels"]); what `models import` records.
CXR_MODEL_PATHOLOGIES: dict[str, tuple[str, ...]] = {
    "densenet121-res224-all": CXR_PATHOLOGIES,
    "densenet121-res224-chex": _CHEX_STYLE,
    "densenet121-res224-mimic_ch": _CHEX_STYLE,
    "densenet121-res224-mimic_nb": _CHEX_STYLE,
    "densenet121-res224-nih": _aligned(*CXR_PATHOLOGIES[:14]),
    "densenet121-res224-pc": _aligned(*CXR_PATHOLOGIES[:14], "Fracture"),
    "densenet121-res224-rsna": _aligned("Pneumonia", "Lung Opacity"),
    "resnet50-res512-all": CXR_PATHOLOGIES,
}
