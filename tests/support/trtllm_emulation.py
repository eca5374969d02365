"""TEST DOUBLE of trtllm-serve's VILA path, answering chat requests with a real (tiny) VILA checkpoint.

trtllm-serve needs TensorRT-LLM and a GPU; CI has neither. This reproduces what its OpenAI chat endpoint does with a
request for a ``llava_llama`` model, step by step as read from TensorRT-LLM (``serve/chat_utils.py``, ``inputs/utils.py``,
``_torch/models/modeling_vila.py``), and answers with :class:`engines.vlm.model.VilaM3` on the same checkpoint:

1. each message's text parts are joined by ``"\\n"``, its images decoded (``load_image(format="pt")``: a float tensor);
2. ``add_multimodal_placeholders`` puts the missing ``<image>`` placeholders in front of the text (with PR #12827 or
   the m3edge patch: only those missing; ``defects.placeholders_added_again``: one per image, as 1.0.0 unpatched);
3. the messages' contents are concatenated; the VILA input processor strips the text and renders it as ONE user turn
   of the template the checkpoint path selects, then tokenises the whole prompt at once with ``<image>`` added to the
   tokenizer as a special token (``init_tokenizer``: for Llama-2 checkpoints the slow ``legacy=False`` tokenizer);
4. each image goes through ``process_image`` (patched: the tensor becomes its PIL image again; ``defects.tensor_resize``:
   ``torch.Tensor.resize`` raises as unpatched) and the projector; ``defects.newline_after_images``: the ids of
   ``tokenizer("\\n")`` (BOS included) follow each image, as ``_postprocess`` does unpatched;
5. greedy decoding stops on the request's ``stop`` strings and the tokenizer's EOS, honours ``min_tokens`` and
   ``max_tokens``, and returns ``logprobs`` as TensorRT-LLM does (``token`` = ``tokenizer.decode(id)``).

The ids it built for each request are kept in ``served_ids`` (``IMAGE_TOKEN_INDEX`` where each image went).
"""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.vlm.base import GenerationConfig, VlmError
from engines.vlm.model import IMAGE_TOKEN_INDEX, VilaM3
from engines.vlm.templates import get_template, render_messages
from engines.vlm.tokenizer import SentencePieceLlamaTokenizer, load_tokenizer

__all__ = ["ServingDefects", "TrtllmVilaEmulation", "EmulationError", "EmulatedAnswer"]

IMAGE = "<image>"


class EmulationError(Exception):
    """What trtllm-serve would answer with an HTTP error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServingDefects:
    """The known defects of an unpatched TensorRT-LLM to reproduce (none: a patched server, or one with the fixes)."""

    placeholders_added_again: bool = False
    newline_after_images: bool = False
    tensor_resize: bool = False


@dataclass
class EmulatedAnswer:
    pieces: list[str]  # the text each generated token adds
    logprobs: list[dict[str, Any]]  # OpenAI logprobs.content entries, one per generated token
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass
class TrtllmVilaEmulation:
    model: VilaM3
    defects: ServingDefects = ServingDefects()
    served_ids: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # TensorRT-LLM's own tokenizer object, with <image> added as a special token (never the model's, left as is)
        self.tokenizer = load_tokenizer(self.model.checkpoint.component("llm"))
        if isinstance(self.tokenizer, SentencePieceLlamaTokenizer):
            (self.image_id,) = self.tokenizer.add_special_tokens([IMAGE])
        else:
            self.tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE]})
            self.image_id = self.tokenizer.convert_tokens_to_ids(IMAGE)

    def answer(self, body: dict[str, Any]) -> EmulatedAnswer:
        text, images = self._conversation(body.get("messages") or [])
        ids = self.tokenizer(self._templated(text)).input_ids
        if ids.count(self.image_id) != len(images):
            raise EmulationError(400, f"the prompt holds {ids.count(self.image_id)} image placeholders for "
                                      f"{len(images)} images: the multimodal features cannot be split")
        pixels = [self._process_image(image) for image in images]
        served = []
        for token in ids:
            if token != self.image_id:
                served.append(token)
                continue
            served.append(IMAGE_TOKEN_INDEX)
            if self.defects.newline_after_images:
                served.extend(self.tokenizer("\n").input_ids)
        self.served_ids.append(served)
        return self._generate(served, pixels, body)

    # -- the request, as trtllm-serve reads it ---------------------------------------------------------------------

    def _conversation(self, messages: list[dict[str, Any]]) -> tuple[str, list[np.ndarray]]:
        contents, images = [], []
        for message in messages:
            parts = message["content"] if isinstance(message["content"], list) else [
                {"type": "text", "text": message["content"]}]
            texts = [part["text"] for part in parts if part.get("type") == "text"]
            pictures = [_decode(part["image_url"]["url"]) for part in parts if part.get("type") == "image_url"]
            content = "\n".join(texts)
            missing = len(pictures) if self.defects.placeholders_added_again else max(0, len(pictures) - content.count(IMAGE))
            contents.append("\n".join([IMAGE] * missing + [content]))
            images.extend(pictures)
        return "".join(contents), images

    def _templated(self, text: str) -> str:
        chat = get_template(self.model.template)
        return render_messages(chat.name, [(chat.user_role, text.strip()), (chat.assistant_role, None)])

    def _process_image(self, image: np.ndarray) -> np.ndarray:
        tensor = image.astype(np.float32).transpose(2, 0, 1) / 255  # load_image(format="pt")
        if self.defects.tensor_resize:  # process_image unpatched: torch.Tensor.resize, answered as an error (400)
            import torch

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "non-inplace resize is deprecated"
                    torch.from_numpy(tensor).resize((384, 384))
            except RuntimeError as error:
                raise EmulationError(400, str(error)) from error
        return np.round(tensor.transpose(1, 2, 0) * 255).astype(np.uint8)  # the patch: back to the PIL image's pixels

    # -- generation --------------------------------------------------------------------------------------------------

    def _generate(self, served: list[int], images: list[np.ndarray], body: dict[str, Any]) -> EmulatedAnswer:
        stop_ids = {int(self.tokenizer.eos_token_id)}
        for stop in body.get("stop") or []:
            encoded = self.tokenizer(stop, add_special_tokens=False).input_ids
            if len(encoded) == 1:
                stop_ids.add(int(encoded[0]))
        top = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
        config = GenerationConfig(max_new_tokens=int(body.get("max_tokens") or 16),
                                  min_new_tokens=int(body.get("min_tokens") or 0), logprobs=max(top, 1))
        try:
            run = self.model.run_ids(served, images, config, stop_token_ids=stop_ids)
        except (VlmError, ValueError) as error:
            raise EmulationError(400, str(error)) from error
        generation = run.generation
        answer_ids = run.output_ids[:-1] if generation.stopped_by == "stop_token" else run.output_ids
        pieces, previous = [], ""
        for count in range(1, len(run.output_ids) + 1):
            decoded = self.model.tokenizer.decode(answer_ids[:count], skip_special_tokens=True)
            pieces.append(decoded[len(previous):])
            previous = decoded
        logprobs = []
        if body.get("logprobs"):
            for token, logprob, alternatives in zip(generation.tokens, generation.token_logprobs, generation.top_logprobs):
                logprobs.append({"token": token, "logprob": logprob, "bytes": list(token.encode()),
                                 "top_logprobs": [{"token": name, "logprob": value, "bytes": list(name.encode())}
                                                  for name, value in alternatives[:top]]})
        return EmulatedAnswer(pieces, logprobs, "stop" if generation.stopped_by == "stop_token" else "length",
                              generation.prompt_tokens, generation.completion_tokens)


def _decode(url: str) -> np.ndarray:
    from PIL import Image

    header, data = url.split(",", 1)
    if not header.startswith("data:image/") or not header.endswith(";base64"):
        raise EmulationError(400, "only base64 data URLs are supported")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
