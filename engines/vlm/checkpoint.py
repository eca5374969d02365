"""The published VILA-M3 checkpoint layout, read and written without the VILA source tree.

```
<checkpoint>/config.json      architectures ["LlavaLlamaModel"], model_type "llava_llama", hidden_size, mm_hidden_size,
                              mm_vision_select_layer (-2), mm_vision_select_feature, llm_cfg / vision_tower_cfg / mm_projector_cfg
<checkpoint>/llm/             a Hugging Face Llama checkpoint + its tokenizer  -> transformers.LlamaForCausalLM
<checkpoint>/vision_tower/    SigLIP (so400m-patch14-384) + preprocessor_config.json  -> transformers.SiglipVisionModel
<checkpoint>/mm_projector/    mlp_downsample (config.json + weights)  -> engines.vlm.projector.MlpDownsampleProjector
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CheckpointError", "VilaCheckpoint", "write_checkpoint", "write_top_config", "ARCHITECTURE", "MODEL_TYPE"]

ARCHITECTURE = "LlavaLlamaModel"
MODEL_TYPE = "llava_llama"
_COMPONENTS = {"llm": "llm_cfg", "vision_tower": "vision_tower_cfg", "mm_projector": "mm_projector_cfg"}


class CheckpointError(ValueError):
    """The directory is not a usable VILA checkpoint; the message names the file and what is wrong."""


@dataclass(frozen=True)
class VilaCheckpoint:
    directory: Path
    config: dict[str, Any] = field(repr=False)

    @classmethod
    def read(cls, directory: Path | str) -> VilaCheckpoint:
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{config_path} not found: a VILA checkpoint directory holds config.json, llm/, vision_tower/, mm_projector/")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error
        checkpoint = cls(directory, config)
        checkpoint._check_identity()
        checkpoint._check_components()
        checkpoint._check_vision_settings()
        return checkpoint

    def _check_identity(self) -> None:
        architectures = self.config.get("architectures") or []
        if ARCHITECTURE not in architectures or self.config.get("model_type") != MODEL_TYPE:
            raise CheckpointError(
                f"{self.directory / 'config.json'}: architectures {architectures} / model_type {self.config.get('model_type')!r}; "
                f"a VILA-M3 checkpoint has {ARCHITECTURE!r} / {MODEL_TYPE!r}"
            )

    def _check_components(self) -> None:
        for name in _COMPONENTS:
            path = self.component(name)
            if not (path / "config.json").is_file():
                raise CheckpointError(f"{path / 'config.json'} not found: the checkpoint's {name}/ component is missing")

    def _check_vision_settings(self) -> None:
        if self.select_feature not in ("cls_patch", "patch"):
            raise CheckpointError(f"mm_vision_select_feature {self.select_feature!r} is not supported (cls_patch or patch)")
        aspect = self.config.get("image_aspect_ratio", "resize")
        if aspect != "resize":
            raise CheckpointError(f"image_aspect_ratio {aspect!r} is not supported: VILA-M3 uses 'resize'")
        if self.config.get("s2"):
            raise CheckpointError("S2 multi-scale vision towers are not supported: VILA-M3 does not use them")

    def component(self, name: str) -> Path:
        """Directory of ``llm``, ``vision_tower`` or ``mm_projector``: ``<checkpoint>/<name>`` as published."""
        if name not in _COMPONENTS:
            raise KeyError(f"unknown component {name!r}; one of {sorted(_COMPONENTS)}")
        return self.directory / name

    @property
    def hidden_size(self) -> int:
        return int(self.config.get("hidden_size") or self.llm_config()["hidden_size"])

    @property
    def mm_hidden_size(self) -> int:
        return int(self.config.get("mm_hidden_size") or self.vision_config()["hidden_size"])

    @property
    def select_layer(self) -> int:
        return int(self.config.get("mm_vision_select_layer", -2))

    @property
    def select_feature(self) -> str:
        return str(self.config.get("mm_vision_select_feature", "cls_patch"))

    @property
    def model_dtype(self) -> str:
        return str(self.config.get("model_dtype", "torch.float16")).removeprefix("torch.")

    def llm_config(self) -> dict[str, Any]:
        return json.loads((self.component("llm") / "config.json").read_text())

    def vision_config(self) -> dict[str, Any]:
        return json.loads((self.component("vision_tower") / "config.json").read_text())

    @property
    def context_length(self) -> int:
        llm = self.llm_config()
        return int(llm.get("tokenizer_model_max_length") or llm.get("model_max_length") or llm.get("max_position_embeddings", 4096))

    @property
    def image_tokens(self) -> int:
        """Embeddings per image after mlp_downsample: ceil(S/2)**2 for an S x S patch grid (196 at 384 px / patch 14)."""
        vision = self.vision_config()
        side = int(vision["image_size"]) // int(vision["patch_size"])
        return ((side + 1) // 2) ** 2


def write_top_config(directory: Path, *, llm_config: dict, vision_config: dict, model_dtype: str, extra: dict | None = None) -> Path:
    """Write ``<checkpoint>/config.json`` in VILA1.5's form (sub-configs point at ./llm, ./vision_tower, ./mm_projector)."""
    directory = Path(directory)
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "hidden_size": llm_config["hidden_size"],
        "mm_hidden_size": vision_config["hidden_size"],
        "image_aspect_ratio": "resize",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "cls_patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "model_dtype": f"torch.{model_dtype}",
        "s2": False,
        "resume_path": ".",
        "llm_cfg": {**llm_config, "_name_or_path": "./llm"},
        "vision_tower_cfg": {**vision_config, "_name_or_path": "./vision_tower"},
        "mm_projector_cfg": {
            "_name_or_path": "./mm_projector",
            "architectures": ["MultimodalProjector"],
            "model_type": "v2l_projector",
            "mm_projector_type": "mlp_downsample",
        },
    }
    if extra:
        config.update(extra)
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2, default=str) + "\n")
    return path


def write_checkpoint(directory: Path, *, llm: Any, tokenizer: Any, vision_tower: Any, preprocessor: Any, projector: Any,
                     model_dtype: str, extra: dict | None = None) -> Path:
    """Save the four parts in the published layout; ``VilaCheckpoint.read`` and the loaders read it back."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    llm.save_pretrained(directory / "llm")
    tokenizer.save_pretrained(directory / "llm")
    vision_tower.save_pretrained(directory / "vision_tower")
    preprocessor.save(directory / "vision_tower")
    projector.save_pretrained(directory / "mm_projector")
    write_top_config(
        directory,
        llm_config=llm.config.to_dict(),
        vision_config=vision_tower.config.to_dict(),
        model_dtype=model_dtype,
        extra=extra,
    )
    return directory
