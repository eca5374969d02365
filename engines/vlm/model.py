"""VilaM3: the in-process ``vila`` backend. Loads a published VILA-M3 checkpoint and answers a conversation.

Faithful to VILA 355fda9: the prompt is rendered by ``engines.vlm.templates``; it is tokenised chunk by chunk around each
``<image>`` (VILA's ``tokenizer_image_token``: the first chunk keeps the tokenizer's BOS, later chunks lose theirs, the
sentinel -200 marks each image) by the tokenizer VILA loads (``engines.vlm.tokenizer``: SentencePiece ``legacy=False``
for the Llama-2 based 3B/13B); each sentinel is replaced by that image's projector output (196 embeddings at 384 px);
SigLIP features come from layer ``mm_vision_select_layer`` (-2) with ``mm_vision_select_feature`` (``cls_patch`` keeps
all patch tokens: SigLIP has no CLS). Decoding is greedy with a KV cache and stops on the template's stop strings
(``<|eot_id|>`` and ``<|end_of_text|>`` for llama_3, ``</s>`` for vicuna_v1) or the tokenizer's EOS; min/max new
tokens are honoured. Needs transformers 5 (``from_pretrained(dtype=...)``, ``cache=`` in the decoding loop).

Create one per worker process and reuse it: loading the 8B takes tens of seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engines.vlm.base import Conversation, Generation, GenerationConfig, VlmError
from engines.vlm.checkpoint import VilaCheckpoint, write_checkpoint
from engines.vlm.preprocessing import SiglipPreprocessor
from engines.vlm.projector import MlpDownsampleProjector, TokenOrder
from engines.vlm.templates import get_template, render_prompt, stop_strings, template_for_checkpoint
from engines.vlm.tokenizer import IMAGE_TOKEN_INDEX, tokenize_with_image_sentinels

__all__ = ["VilaM3", "VilaRun", "IMAGE_TOKEN_INDEX", "resolve_dtype"]

logger = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: fp16 on CUDA (as VILA-M3 was evaluated), fp32 on CPU; or ``float16``/``bfloat16``/``float32``."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    if device.type == "cpu" and _DTYPES[dtype] is torch.float16:
        raise ValueError("float16 on CPU is not supported here: use float32 (or bfloat16) on CPU")
    return _DTYPES[dtype]


@dataclass(frozen=True)
class VilaRun:
    """One generation with what the benchmark and the tests look at."""

    generation: Generation
    input_ids: list[int]  # with IMAGE_TOKEN_INDEX where each image goes
    output_ids: list[int]  # generated ids, the stop token included when one ended the answer
    image_embeddings: int  # embeddings spliced in, all images together
    prompt_build_s: float
    image_encode_s: float

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.generation.total_s - self.generation.time_to_first_token_s
        later = len(self.output_ids) - 1
        return later / decode_s if later > 0 and decode_s > 0 else 0.0


class VilaM3:
    """``VisionLanguageModel`` over a VILA-M3 checkpoint directory, run in this process with PyTorch."""

    def __init__(
        self,
        checkpoint_dir: Path | str,
        *,
        template: str | None = None,
        checkpoint_name: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        projector_order: TokenOrder | str = TokenOrder.VILA_355FDA9,
    ) -> None:
        if template is None and checkpoint_name is None:
            raise ValueError(
                "say which conversation template the checkpoint was trained with: template= (llama_3, vicuna_v1, hermes-2) "
                "or checkpoint_name= (Llama3-VILA-M3-3B, -8B, -13B); it is never guessed from the directory name"
            )
        self.template = get_template(template if template is not None else template_for_checkpoint(checkpoint_name)).name
        self.checkpoint = VilaCheckpoint.read(checkpoint_dir)
        self.model_name = checkpoint_name or Path(checkpoint_dir).name
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
        self.dtype = resolve_dtype(dtype, self.device)
        self._load(TokenOrder(projector_order))
        self._stop_token_ids, self._stop_sequences = self._stop_tokens()

    # -- loading -------------------------------------------------------------------------------------------------

    def _load(self, order: TokenOrder) -> None:
        from transformers import LlamaForCausalLM, SiglipVisionModel

        from engines.vlm.tokenizer import load_tokenizer

        started = time.perf_counter()
        llm_dir = self.checkpoint.component("llm")
        try:
            self.tokenizer = load_tokenizer(llm_dir)
            self.llm = LlamaForCausalLM.from_pretrained(llm_dir, dtype=self.dtype).to(self.device).eval()
            tower_dir = self.checkpoint.component("vision_tower")
            self.vision_tower = SiglipVisionModel.from_pretrained(tower_dir, dtype=self.dtype).to(self.device).eval()
            self.preprocessor = SiglipPreprocessor.from_directory(tower_dir)
            self.projector = (
                MlpDownsampleProjector.from_pretrained(
                    self.checkpoint.component("mm_projector"), self.checkpoint.mm_hidden_size, self.checkpoint.hidden_size, order
                )
                .to(device=self.device, dtype=self.dtype)
                .eval()
            )
        except (OSError, ValueError, KeyError) as error:
            raise VlmError(f"cannot load the VILA checkpoint at {self.checkpoint.directory}: {error}") from error
        if self.llm.config.hidden_size != self.checkpoint.hidden_size:
            raise VlmError(f"llm/ hidden size {self.llm.config.hidden_size} differs from config.json hidden_size {self.checkpoint.hidden_size}")
        logger.info(
            "loaded VILA checkpoint %s (template %s, %s, %s, projector order %s) in %.1f s",
            self.model_name, self.template.value, self.device, self.dtype, order.value, time.perf_counter() - started,
        )

    def _stop_tokens(self) -> tuple[set[int], list[list[int]]]:
        ids: set[int] = set()
        sequences: list[list[int]] = []
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        for text in stop_strings(self.template):
            encoded = self.tokenizer(text, add_special_tokens=False).input_ids
            if len(encoded) == 1:
                ids.add(int(encoded[0]))
            elif encoded:
                sequences.append([int(i) for i in encoded])
        return ids, sequences

    @property
    def backend_name(self) -> str:
        return f"vila-torch-{self.device.type}"

    # -- the pieces ----------------------------------------------------------------------------------------------

    def tokenize_prompt(self, prompt: str) -> list[int]:
        """VILA's ``tokenizer_image_token``: ids with ``IMAGE_TOKEN_INDEX`` at each ``<image>`` (see
        ``engines.vlm.tokenizer.tokenize_with_image_sentinels``)."""
        return tokenize_with_image_sentinels(self.tokenizer, prompt)

    @torch.inference_mode()
    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """(N, tokens, hidden) projector outputs for N images (196 tokens each at 384 px, patch 14)."""
        pixels = torch.from_numpy(np.stack([self.preprocessor(image) for image in images]))
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        outputs = self.vision_tower(pixel_values=pixels, output_hidden_states=True)
        features = outputs.hidden_states[self.checkpoint.select_layer]
        if self.checkpoint.select_feature == "patch":
            features = features[:, 1:]  # VILA's "patch": drop a CLS token (SigLIP has none: use cls_patch)
        return self.projector(features)

    def embed(self, input_ids: list[int], image_embeddings: torch.Tensor) -> torch.Tensor:
        """Text embeddings with each sentinel replaced by the next image's embeddings, in order: (1, L, hidden)."""
        positions = [i for i, token in enumerate(input_ids) if token == IMAGE_TOKEN_INDEX]
        if len(positions) != image_embeddings.shape[0]:
            raise VlmError(f"the prompt has {len(positions)} <image> placeholders but {image_embeddings.shape[0]} images were encoded")
        table = self.llm.get_input_embeddings()
        pieces: list[torch.Tensor] = []
        start = 0
        for index, position in enumerate(positions + [len(input_ids)]):
            text = input_ids[start:position]
            if text:
                pieces.append(table(torch.tensor(text, device=self.device)))
            if index < len(positions):
                pieces.append(image_embeddings[index].to(table.weight.dtype))
            start = position + 1
        return torch.cat(pieces).unsqueeze(0)

    # -- generation ----------------------------------------------------------------------------------------------

    def generate(self, conversation: Conversation, config: GenerationConfig = GenerationConfig()) -> Generation:
        return self.run(conversation, config).generation

    def prompt_embeddings(self, conversation: Conversation) -> torch.Tensor:
        """(1, L, hidden): the prompt's text embeddings with each image's 196 embeddings in place."""
        self._check_template(conversation)
        return self._embeddings(self.tokenize_prompt(render_prompt(conversation)), conversation.images)[0]

    def prompt_logits(self, conversation: Conversation) -> torch.Tensor:
        """Next-token logits after the prompt (float32, on CPU): what a save/load round trip must keep."""
        inputs_embeds = self.prompt_embeddings(conversation)
        with torch.inference_mode():
            return self.llm(inputs_embeds=inputs_embeds, logits_to_keep=1).logits[0, -1].float().cpu()

    def _check_template(self, conversation: Conversation) -> None:
        if conversation.template != self.template.value:
            raise VlmError(
                f"the conversation uses template {conversation.template!r} but this checkpoint is loaded with "
                f"{self.template.value!r}: build the conversation with the model's template"
            )

    def _embeddings(self, input_ids: list[int], images: list[np.ndarray]) -> tuple[torch.Tensor, int]:
        if images:
            image_embeddings = self.encode_images(images)
        else:
            image_embeddings = torch.zeros(0, 0, self.checkpoint.hidden_size, device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            inputs_embeds = self.embed(input_ids, image_embeddings)
        return inputs_embeds, int(image_embeddings.shape[0] * image_embeddings.shape[1]) if images else 0

    def run(self, conversation: Conversation, config: GenerationConfig = GenerationConfig()) -> VilaRun:
        self._check_template(conversation)
        started = time.perf_counter()
        prompt = render_prompt(conversation)
        return self.run_ids(self.tokenize_prompt(prompt), conversation.images, config, prompt=prompt, started=started)

    def run_ids(
        self,
        input_ids: list[int],
        images: list[np.ndarray],
        config: GenerationConfig = GenerationConfig(),
        *,
        prompt: str = "",
        stop_token_ids: set[int] | None = None,
        started: float | None = None,
    ) -> VilaRun:
        """Answer the prompt ``input_ids`` (``IMAGE_TOKEN_INDEX`` where each of ``images`` goes), greedily.

        ``stop_token_ids`` replaces the stop tokens (default: the template's stop strings and the tokenizer's EOS).
        """
        _check_config(config)
        started = time.perf_counter() if started is None else started
        built = time.perf_counter()
        inputs_embeds, image_count = self._embeddings(input_ids, images)
        encoded = time.perf_counter()
        prompt_tokens = int(inputs_embeds.shape[1])
        context = self.checkpoint.context_length
        if prompt_tokens >= context:
            raise VlmError(f"the prompt is {prompt_tokens} tokens, the model's context is {context}: shorten it")
        budget = min(config.max_new_tokens, context - prompt_tokens)
        stops = (set(stop_token_ids), []) if stop_token_ids is not None else (self._stop_token_ids, self._stop_sequences)
        decoded = self._decode(inputs_embeds, budget, config, started, stops)
        finished = time.perf_counter()
        output_ids, stopped_by = decoded.output_ids, decoded.stopped_by
        answer_ids = output_ids[:-1] if stopped_by == "stop_token" else output_ids
        text = self.tokenizer.decode(answer_ids, skip_special_tokens=True)
        for stop in stop_strings(self.template):
            if text.endswith(stop):
                text = text[: -len(stop)]
        generation = Generation(
            text=text.strip(),
            prompt=prompt,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(output_ids),
            stopped_by=stopped_by,
            time_to_first_token_s=decoded.first_token_at - started,
            total_s=finished - started,
            backend=self.backend_name,
            model=self.model_name,
            tokens=tuple(self.token_text(token) for token in output_ids) if config.logprobs else (),
            token_logprobs=tuple(decoded.logprobs),
            top_logprobs=tuple(tuple((self.token_text(t), p) for t, p in top) for top in decoded.top),
        )
        return VilaRun(generation, input_ids, output_ids, image_count, built - started, encoded - built)

    def token_text(self, token: int) -> str:
        """One token as the tokenizer decodes it alone (how an OpenAI-compatible server names it in ``logprobs``)."""
        return self.tokenizer.decode([int(token)])

    @torch.inference_mode()
    def _decode(
        self,
        inputs_embeds: torch.Tensor,
        budget: int,
        config: GenerationConfig,
        started: float,
        stops: tuple[set[int], list[list[int]]],
    ) -> _Decoded:
        stop_ids, stop_sequences = stops
        decoded = _Decoded()
        output_ids = decoded.output_ids
        suppress = torch.tensor(sorted(stop_ids), device=self.device, dtype=torch.long)
        sampler = torch.Generator(device="cpu").manual_seed(0) if config.temperature > 0 else None
        out = self.llm(inputs_embeds=inputs_embeds, use_cache=True, logits_to_keep=1)
        while True:
            logits = out.logits[0, -1].float()
            if config.logprobs:
                decoded.record(logits, config.logprobs)
            if len(output_ids) < config.min_new_tokens and suppress.numel():
                logits[suppress] = float("-inf")
            token = _pick(logits, config.temperature, sampler)
            output_ids.append(token)
            if config.logprobs:
                decoded.chose(token)
            if len(output_ids) == 1:
                decoded.first_token_at = time.perf_counter()
            if token in stop_ids:
                decoded.stopped_by = "stop_token"
                return decoded
            if any(output_ids[-len(seq):] == seq for seq in stop_sequences if len(output_ids) >= config.min_new_tokens):
                decoded.stopped_by = "stop_token"
                return decoded
            if len(output_ids) >= budget:
                decoded.stopped_by = "max_new_tokens"
                return decoded
            if time.perf_counter() - started > config.timeout_s:
                raise VlmError(f"generation passed its {config.timeout_s:g} s timeout after {len(output_ids)} tokens")
            step = torch.tensor([[token]], device=self.device)
            out = self.llm(input_ids=step, cache=out.cache, use_cache=True)

    # -- saving --------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: Path | str) -> Path:
        """Write this model in the published layout (the projector keeps VILA's parameter names)."""
        extra = {key: value for key, value in self.checkpoint.config.items() if key not in ("llm_cfg", "vision_tower_cfg", "mm_projector_cfg")}
        extra["model_dtype"] = f"torch.{str(self.dtype).removeprefix('torch.')}"
        return write_checkpoint(
            Path(directory),
            llm=self.llm,
            tokenizer=self.tokenizer,
            vision_tower=self.vision_tower,
            preprocessor=self.preprocessor,
            projector=self.projector,
            model_dtype=str(self.dtype).removeprefix("torch."),
            extra=extra,
        )


@dataclass
class _Decoded:
    """What one decoding loop produced; the log-probabilities are of the raw logits (before min_new_tokens holds the
    stop tokens back)."""

    output_ids: list[int] = field(default_factory=list)
    stopped_by: str = ""
    first_token_at: float = 0.0
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    _step: torch.Tensor | None = None

    def record(self, logits: torch.Tensor, count: int) -> None:
        self._step = torch.log_softmax(logits, dim=-1)
        values, indices = torch.topk(self._step, min(count, self._step.numel()))
        self.top.append([(int(i), float(v)) for i, v in zip(indices.tolist(), values.tolist())])

    def chose(self, token: int) -> None:
        assert self._step is not None
        self.logprobs.append(float(self._step[token]))


def _check_config(config: GenerationConfig) -> None:
    if config.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {config.max_new_tokens}")
    if not 0 <= config.min_new_tokens <= config.max_new_tokens:
        raise ValueError(f"min_new_tokens must be between 0 and max_new_tokens, got {config.min_new_tokens}")
    if config.temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {config.temperature}")


def _pick(logits: torch.Tensor, temperature: float, sampler: torch.Generator | None) -> int:
    if temperature <= 0 or sampler is None:
        return int(torch.argmax(logits))
    probabilities = torch.softmax(logits / temperature, dim=-1).cpu()
    return int(torch.multinomial(probabilities, 1, generator=sampler))
