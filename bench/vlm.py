"""Benchmark of the in-process VILA-M3 backend: prompt build, image encoding, time to first token, tokens/s.

``python -m bench.vlm`` writes the tiny demo checkpoint (real layout, 384 px SigLIP path, random weights) and measures it
on whatever device is present; ``--checkpoint DIR --checkpoint-name Llama3-VILA-M3-8B`` measures a real one. The peer
measured in the same run is decoding without the KV cache (the whole sequence recomputed for every token): the ratio is
what the cache buys. Last, it prints the parameters the service would use for the real checkpoints on a GPU, with memory
estimates from the published architectures (instantiated on the meta device: no weights, no download).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

# Published architectures (LLM base + SigLIP so400m-patch14-384 + mlp_downsample), for the GPU plan.
_LLM_ARCHITECTURES = {
    "Llama3-VILA-M3-3B": dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=32, num_attention_heads=20,
                              num_key_value_heads=20, vocab_size=32000),
    "Llama3-VILA-M3-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                              num_key_value_heads=8, vocab_size=128256),
    "Llama3-VILA-M3-13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                               num_key_value_heads=40, vocab_size=32000),
}
_SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                      image_size=384, patch_size=14)
_CONTEXT = 4096
_MAX_NEW_TOKENS = 1024


def _first_turn(template: str, images: int = 1):
    from engines.vlm.base import Conversation

    cards = (Path(__file__).resolve().parents[1] / "engines" / "protocol_data" / "vila_m3_model_cards.txt").read_text()
    rng = np.random.default_rng(0)
    pictures = tuple((rng.random((512, 512, 3)) * 255).astype(np.uint8) for _ in range(images))
    text = cards + "<image> This is a CT image.\n" + "Describe the image in detail."
    return Conversation(template).add("user", text, pictures)


def _median_s(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _uncached_tokens_per_s(model, conversation, tokens: int) -> float:
    import torch

    inputs_embeds = model.prompt_embeddings(conversation)
    table = model.llm.get_input_embeddings()
    generated: list[int] = []
    started = time.perf_counter()
    with torch.inference_mode():
        for _ in range(tokens):
            extra = table(torch.tensor(generated, dtype=torch.long, device=model.device)).unsqueeze(0)
            logits = model.llm(inputs_embeds=torch.cat([inputs_embeds, extra], dim=1), logits_to_keep=1).logits[0, -1]
            generated.append(int(torch.argmax(logits)))
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return tokens / elapsed


def measure(checkpoint: Path, template: str | None, checkpoint_name: str | None, device: str, dtype: str,
            tokens: int, repeats: int) -> dict[str, float]:
    from engines.vlm.base import GenerationConfig
    from engines.vlm.model import VilaM3
    from engines.vlm.templates import render_prompt

    started = time.perf_counter()
    model = VilaM3(checkpoint, template=template, checkpoint_name=checkpoint_name, device=device, dtype=dtype)
    load_s = time.perf_counter() - started
    conversation = _first_turn(model.template.value)
    config = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens)
    model.run(conversation, GenerationConfig(max_new_tokens=2, min_new_tokens=2))  # warm-up
    prompt_build_s = _median_s(lambda: model.tokenize_prompt(render_prompt(conversation)), repeats)
    image_encode_s = _median_s(lambda: model.encode_images(conversation.images), repeats)
    runs = [model.run(conversation, config) for _ in range(repeats)]
    ttft = statistics.median(r.generation.time_to_first_token_s for r in runs)
    cached = statistics.median(r.tokens_per_s for r in runs)
    uncached = _uncached_tokens_per_s(model, conversation, tokens)
    return {
        "device": f"{model.device.type} {str(model.dtype).removeprefix('torch.')}",
        "load_s": load_s,
        "prompt_tokens": runs[0].generation.prompt_tokens,
        "image_embeddings": runs[0].image_embeddings,
        "prompt_build_ms": prompt_build_s * 1e3,
        "image_encode_ms": image_encode_s * 1e3,
        "time_to_first_token_ms": ttft * 1e3,
        "tokens_per_s": cached,
        "tokens_per_s_without_kv_cache": uncached,
        "kv_cache_speedup": cached / uncached if uncached else float("nan"),
    }


def gpu_plan() -> list[dict[str, object]]:
    """Parameters and memory estimates for the real checkpoints in fp16 on one GPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from engines.vlm.projector import MlpDownsampleProjector

    with torch.device("meta"):
        tower = SiglipVisionModel(SiglipVisionConfig(**_SIGLIP_SO400M))
        tower_params = sum(p.numel() for p in tower.parameters())
    plans = []
    for name, architecture in _LLM_ARCHITECTURES.items():
        config = LlamaConfig(**architecture, max_position_embeddings=_CONTEXT)
        with torch.device("meta"):
            llm_params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
            projector_params = sum(p.numel() for p in MlpDownsampleProjector(1152, architecture["hidden_size"]).parameters())
        head_dim = architecture["hidden_size"] // architecture["num_attention_heads"]
        kv_per_token = 2 * architecture["num_hidden_layers"] * architecture["num_key_value_heads"] * head_dim * 2  # K+V, fp16
        weights = (llm_params + tower_params + projector_params) * 2
        plans.append({
            "checkpoint": name,
            "dtype": "float16 (as evaluated; bfloat16 also works)",
            "parameters_b": (llm_params + tower_params + projector_params) / 1e9,
            "weights_gib": weights / 2**30,
            "kv_cache_kib_per_token": kv_per_token / 2**10,
            "kv_cache_gib_at_context": kv_per_token * _CONTEXT / 2**30,
            "estimate_gib": (weights + kv_per_token * _CONTEXT) / 2**30 * 1.1,  # +10 % activations and allocator slack
        })
    return plans


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a VILA-M3 checkpoint directory (default: a tiny demo one)")
    parser.add_argument("--checkpoint-name", help="Llama3-VILA-M3-3B, -8B or -13B (chooses the template)")
    parser.add_argument("--template", help="llama_3, vicuna_v1 or hermes-2 (default llama_3 for the demo)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        if args.checkpoint is None:
            from engines.vlm.demo import write_demo_checkpoint

            template = args.template or "llama_3"
            checkpoint = write_demo_checkpoint(Path(scratch) / "demo", template)
            print(f"checkpoint: DEMO (tiny random VILA layout: Llama 64-d x 2 layers, SigLIP 32-d x 2 layers, 384 px), {template}")
        else:
            checkpoint, template = args.checkpoint, args.template
            print(f"checkpoint: {checkpoint}")
        results = measure(checkpoint, template, args.checkpoint_name, args.device, args.dtype, args.tokens, args.repeats)
    print(f"first turn: model cards + 1 image (512x512 -> 384x384) + question; {args.tokens} new tokens, greedy, median of {args.repeats}")
    for key, value in results.items():
        print(f"  {key:32s} {value:.3f}" if isinstance(value, float) else f"  {key:32s} {value}")
    print(f"\nreal checkpoints on a GPU (fp16, KV cache on, greedy, max_new_tokens {_MAX_NEW_TOKENS}, min_new_tokens 2, "
          f"context {_CONTEXT}, 196 embeddings per image):")
    for plan in gpu_plan():
        print(f"  {plan['checkpoint']}: {plan['parameters_b']:.2f} B parameters, weights {plan['weights_gib']:.1f} GiB, "
              f"KV cache {plan['kv_cache_kib_per_token']:.0f} KiB/token = {plan['kv_cache_gib_at_context']:.2f} GiB at {_CONTEXT}, "
              f"about {plan['estimate_gib']:.1f} GiB in all; dtype {plan['dtype']}")


if __name__ == "__main__":
    main()
