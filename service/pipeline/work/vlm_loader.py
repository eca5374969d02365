"""The VILA-M3 backend the settings name, loaded once per worker: in-process ``vila`` or an ``openai`` server.

The checkpoint folder is ``VLM_MODEL_DIR``, else ``HOME/models/vila-m3-<VLM_CHECKPOINT>``, else the demo checkpoint
``HOME/models/vila-m3-demo`` (written by ``m3edge models demo``). The template is ``VLM_TEMPLATE``, else the one
``VLM_CHECKPOINT`` was trained with; it is never guessed from a folder name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from engines.model_store.manifest import folder_digest
from service.config import Settings, VlmBackend
from service.pipeline.stages import PermanentStageError

__all__ = ["LoadedVlm", "load_vlm", "vila_checkpoint_dir"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedVlm:
    model: object  # engines.vlm.VisionLanguageModel
    template: str
    name: str  # what the report calls it
    version: str
    weights_digest: str
    demo: bool


def vila_checkpoint_dir(settings: Settings) -> Path:
    if settings.vlm_model_dir is not None:
        return Path(settings.vlm_model_dir)
    for candidate in (settings.models_dir / f"vila-m3-{settings.vlm_checkpoint}", settings.models_dir / "vila-m3-demo"):
        if (candidate / "config.json").is_file():
            return candidate
    raise PermanentStageError(
        f"no VILA-M3 checkpoint in {settings.models_dir}: import one (m3edge models import), set M3EDGE_VLM_MODEL_DIR, "
        "or write the demo models (m3edge models demo)"
    )


def _template(settings: Settings) -> str:
    from engines.vlm import template_for_checkpoint

    if settings.vlm_template:
        return settings.vlm_template
    try:
        return template_for_checkpoint(settings.vlm_checkpoint).value
    except ValueError as exc:
        raise PermanentStageError(str(exc)) from exc


def load_vlm(settings: Settings) -> LoadedVlm:
    template = _template(settings)
    if settings.vlm_backend is VlmBackend.OPENAI:
        from engines.vlm import OpenAIVisionLanguageModel

        model = OpenAIVisionLanguageModel(
            str(settings.vlm_url), template=template, model=settings.vlm_served_model, mode=settings.vlm_prompt_mode,
            api_key=settings.vlm_api_key.get_secret_value() if settings.vlm_api_key else None,
        )
        name = settings.vlm_served_model or settings.vlm_checkpoint
        return LoadedVlm(model, template, name, settings.vlm_checkpoint, f"served:{name}", demo=False)
    from engines.vlm import CheckpointError, VilaM3

    directory = vila_checkpoint_dir(settings)
    try:
        model = VilaM3(directory, template=template, device=settings.vlm_device, dtype=settings.vlm_dtype,
                       projector_order=settings.vlm_projector_order)
    except (CheckpointError, OSError, ValueError) as exc:
        raise PermanentStageError(f"cannot load the VILA-M3 checkpoint {directory}: {exc}") from exc
    config = json.loads((directory / "config.json").read_text())
    demo = bool(config.get("m3edge_demo", False)) or directory.name.endswith("-demo")
    name = "VILA-M3 demo" if demo else settings.vlm_checkpoint
    LOGGER.info("VILA-M3 loaded from %s (template %s, demo %s)", directory, template, demo)
    return LoadedVlm(model, template, name, directory.name, folder_digest(directory), demo)
