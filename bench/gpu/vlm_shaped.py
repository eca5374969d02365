"""The VILA-M3-8B-shaped model with random weights: memory, time to first token and tokens/s, eager and compiled.

No checkpoint is read or downloaded: a tiny demo checkpoint supplies the tokenizer, image preprocessor and config
files (the real layout), and its networks are replaced, in memory, by ones with the published dimensions: Llama-3-8B
(hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336, vocabulary 128256), SigLIP so400m-patch14-384
and the ``mlp_downsample`` projector; bf16 on the GPU, batch 1. Generation runs through ``VilaM3.run``, the service's
own code path. The tiny tokenizer splits the prompt into more tokens than Llama-3's would, so time to first token is
measured on a longer prompt than the real one (the prompt length is reported).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["LLAMA3_8B", "SIGLIP_SO400M", "TINY_LLM", "TINY_VISION", "shaped_model", "measure_generation"]

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0)
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                     image_size=384, patch_size=14)
TINY_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=1024, rope_theta=500000.0)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=384,
                   patch_size=14)
_CARDS = Path(__file__).resolve().parents[2] / "engines" / "protocol_data" / "vila_m3_model_cards.txt"


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def shaped_model(scratch: Path, llm: dict, vision: dict, device: str, dtype: str):
    """A ``VilaM3`` whose LLM, vision tower and projector have the given dimensions and random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from engines.vlm.checkpoint import VilaCheckpoint
    from engines.vlm.demo import write_demo_checkpoint
    from engines.vlm.model import VilaM3
    from engines.vlm.projector import MlpDownsampleProjector

    directory = write_demo_checkpoint(scratch / "vila1.5-8b-shaped", "llama_3")
    model = VilaM3(directory, template="llama_3", device=device, dtype=dtype)
    tokenizer = model.tokenizer
    llm_config = LlamaConfig(**llm, max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    vision_config = SiglipVisionConfig(**vision, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    torch.manual_seed(0)
    with _default_dtype(model.dtype), torch.device(model.device):
        model.llm = LlamaForCausalLM(llm_config).eval()
        model.vision_tower = SiglipVisionModel(vision_config).eval()
        model.projector = MlpDownsampleProjector(vision["hidden_size"], llm["hidden_size"]).to(model.dtype).eval()
    model.checkpoint = VilaCheckpoint(model.checkpoint.directory, {**model.checkpoint.config, "hidden_size": llm["hidden_size"],
                                                                    "mm_hidden_size": vision["hidden_size"]})
    return model


def _first_turn():
    from engines.vlm.base import Conversation

    cards = _CARDS.read_text() if _CARDS.is_file() else ""
    image = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)
    return Conversation("llama_3").add("user", cards + "<image> This is a CT image.\nDescribe the image in detail.", (image,))


def measure_generation(model, tokens: int, repeats: int) -> dict:
    """Median over ``repeats`` runs after one warm-up run (which, for a compiled model, includes compiling)."""
    from engines.vlm.base import GenerationConfig

    conversation = _first_turn()
    config = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens)
    started = time.perf_counter()
    model.run(conversation, GenerationConfig(max_new_tokens=4, min_new_tokens=4))
    warmup_s = time.perf_counter() - started
    runs = [model.run(conversation, config) for _ in range(repeats)]
    return {
        "prompt_tokens": runs[0].generation.prompt_tokens,
        "image_embeddings": runs[0].image_embeddings,
        "new_tokens": len(runs[0].output_ids),
        "warmup_s": warmup_s,
        "time_to_first_token_ms": statistics.median(r.generation.time_to_first_token_s for r in runs) * 1e3,
        "tokens_per_s": statistics.median(r.tokens_per_s for r in runs),
        "image_encode_ms": statistics.median(r.image_encode_s for r in runs) * 1e3,
    }


def vlm_check(tiny: bool, device: str, tokens: int, repeats: int, compile_backend: str | None, allow) -> dict:
    llm, vision = (TINY_LLM, TINY_VISION) if tiny else (LLAMA3_8B, SIGLIP_SO400M)
    dtype = "float32" if tiny else "bfloat16"
    result: dict = {"shape": "tiny (dry run)" if tiny else "VILA-M3-8B (Llama-3-8B + SigLIP so400m-patch14-384)",
                    "dtype": dtype, "device": device, "batch": 1}
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as scratch:  # the tokenizer and config files are read while it runs
        _measure_into(result, Path(scratch), llm, vision, device, dtype, tokens, repeats, compile_backend, allow)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def _measure_into(result: dict, scratch: Path, llm: dict, vision: dict, device: str, dtype: str, tokens: int,
                  repeats: int, compile_backend: str | None, allow) -> None:
    started = time.perf_counter()
    model = shaped_model(scratch, llm, vision, device, dtype)
    result["build_s"] = time.perf_counter() - started
    parameters = sum(p.numel() for part in (model.llm, model.vision_tower, model.projector) for p in part.parameters())
    result["parameters_b"] = parameters / 1e9
    result["weights_gib"] = sum(p.numel() * p.element_size() for part in (model.llm, model.vision_tower, model.projector)
                                for p in part.parameters()) / 2**30
    result["eager"] = measure_generation(model, tokens, repeats)
    if device.startswith("cuda"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["gpu_total_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    if compile_backend is None:
        result["compiled"] = "not run"
    elif (reason := allow("vlm_compile")) is not None:
        result["compiled"] = reason
    else:
        try:
            model.llm.forward = torch.compile(model.llm.forward, backend=compile_backend, dynamic=True)
            result["compiled"] = {"backend": compile_backend, **measure_generation(model, tokens, repeats)}
            result["compiled"]["tokens_per_s_speedup"] = result["compiled"]["tokens_per_s"] / result["eager"]["tokens_per_s"]
        except Exception as exc:  # the compiler's failures are many kinds; the run goes on and says which
            result["compiled"] = f"failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
    del model
