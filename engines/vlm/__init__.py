"""VILA-M3: conversation types, VILA's chat templates, the in-process ``vila`` backend and the ``openai`` backend.

The light parts (base types, templates) import at once; the backends, the checkpoint loader, the projector and the demo
checkpoint writer import torch/transformers/httpx only when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from engines.vlm.base import Conversation, Generation, GenerationConfig, Message, Role, VisionLanguageModel, VlmError
from engines.vlm.templates import (
    KNOWN_CHECKPOINT_TEMPLATES,
    TemplateName,
    render_prompt,
    stop_strings,
    template_for_checkpoint,
)

__all__ = [
    "Conversation",
    "Generation",
    "GenerationConfig",
    "Message",
    "Role",
    "VisionLanguageModel",
    "VlmError",
    "TemplateName",
    "KNOWN_CHECKPOINT_TEMPLATES",
    "render_prompt",
    "stop_strings",
    "template_for_checkpoint",
    "VilaM3",
    "VilaCheckpoint",
    "CheckpointError",
    "MlpDownsampleProjector",
    "TokenOrder",
    "SiglipPreprocessor",
    "OpenAIVisionLanguageModel",
    "PromptMode",
    "write_demo_checkpoint",
]

_LAZY = {
    "VilaM3": "engines.vlm.model",
    "VilaCheckpoint": "engines.vlm.checkpoint",
    "CheckpointError": "engines.vlm.checkpoint",
    "MlpDownsampleProjector": "engines.vlm.projector",
    "TokenOrder": "engines.vlm.projector",
    "SiglipPreprocessor": "engines.vlm.preprocessing",
    "OpenAIVisionLanguageModel": "engines.vlm.openai_backend",
    "PromptMode": "engines.vlm.openai_backend",
    "write_demo_checkpoint": "engines.vlm.demo",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engines.vlm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
