"""The tokenizer of a VILA-M3 checkpoint's ``llm/``, loaded the way VILA 355fda9 loads it.

VILA (NVlabs/VILA 355fda9, ``llava/model/language_model/builder.py``, ``build_llm_and_tokenizer``) loads every Llama
checkpoint's tokenizer with ``AutoTokenizer.from_pretrained(llm_path, use_fast=False, legacy=False)``. For the Llama-2
based checkpoints (VILA1.5-3B and -13B, so Llama3-VILA-M3-3B and -13B) that is transformers' slow SentencePiece
``LlamaTokenizer`` with ``legacy=False`` (transformers 4.36, VILA's pin); Llama-3 has no slow tokenizer, so the 8B gets
its fast one (``tokenizer.json``).

transformers 5 has no slow Llama tokenizer any more (``use_fast`` is ignored) and its ``LlamaTokenizer(legacy=False)``
rebuilds a ``tokenizers`` pipeline that differs from the slow one on a piece of text that starts with a space (one
``"\u2581"`` token fewer: exactly the text after each ``<image>`` in the raw prompt form). So
:class:`SentencePieceLlamaTokenizer` is our own implementation of the slow ``legacy=False`` algorithm on top of the
``sentencepiece`` library (written from transformers 4.36's documented behaviour, checked against that version's
output in ``tests/unit/engines/test_vlm_tokenizer.py``):

- the SentencePiece model runs with its dummy prefix turned off;
- ``tokenize(text)`` prepends ``"\u2581"`` to the whole text (spaces stay spaces), splits it at the special and added
  tokens, and encodes each other piece: a piece starting with ``"\u2581"`` or a space is encoded behind the unknown
  token, which is then cut off again (so its leading space survives), any other piece as it is; a lone leading
  ``"\u2581"`` before a special token is dropped;
- ``encode`` puts BOS in front (``add_bos_token``), and no EOS unless ``add_eos_token``.

So ``</s>USER:`` gives ``</s>`` then ``US`` ``ER`` ``:`` (no space before ``USER``, as VILA trained), and every chunk VILA
tokenises on its own (``tokenizer_image_token`` splits the prompt at each ``<image>``) starts with a space token.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_TOKEN_INDEX",
    "SentencePieceLlamaTokenizer",
    "TokenizerEncoding",
    "load_tokenizer",
    "is_sentencepiece_model",
    "tokenize_with_image_sentinels",
]

IMAGE_TOKEN_INDEX = -200  # VILA's sentinel for "<image>" while tokenising
IMAGE_PLACEHOLDER = "<image>"

SPIECE_UNDERLINE = "\u2581"
MODEL_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"
_LLAMA_CLASSES = {"LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", None}


@dataclass(frozen=True)
class TokenizerEncoding:
    """What ``tokenizer(text)`` returns: the ids (transformers' ``BatchEncoding.input_ids`` for one text)."""

    input_ids: list[int]


def _token_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("content")
    return str(value)


def is_sentencepiece_model(path: Path) -> bool:
    """True when ``path`` is a SentencePiece model (Llama-3's ``tokenizer.model``, when present, is tiktoken's)."""
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError):
        return False
    return True


class SentencePieceLlamaTokenizer:
    """transformers 4.36's slow ``LlamaTokenizer(legacy=False)``, as VILA 355fda9 loads it for Llama-2 checkpoints."""

    def __init__(
        self,
        model_file: Path | str,
        *,
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        added_tokens: dict[str, int] | None = None,
    ) -> None:
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2

        self.model_file = Path(model_file)
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self.model_file.read_bytes())
        proto.normalizer_spec.add_dummy_prefix = False  # legacy=False: the prefix space is handled in tokenize()
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.bos_token, self.eos_token, self.unk_token = bos_token, eos_token, unk_token
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        self._added: dict[str, int] = {}
        for token, index in (added_tokens or {}).items():
            self._add(token, index)
        self._unk_length = len(self.sp.encode(self.unk_token, out_type=str))
        self._split = self._splitter()

    # -- loading and saving ----------------------------------------------------------------------------------------

    @classmethod
    def from_directory(cls, directory: Path | str) -> SentencePieceLlamaTokenizer:
        directory = Path(directory)
        config = json.loads((directory / CONFIG_FILE).read_text()) if (directory / CONFIG_FILE).is_file() else {}
        specials_file = directory / "special_tokens_map.json"
        specials = json.loads(specials_file.read_text()) if specials_file.is_file() else {}
        added = {
            _token_text(entry): int(index)
            for index, entry in (config.get("added_tokens_decoder") or {}).items()
            if _token_text(entry)
        }

        def special(name: str, default: str) -> str:
            return _token_text(config.get(name)) or _token_text(specials.get(name)) or default

        return cls(
            directory / MODEL_FILE,
            bos_token=special("bos_token", "<s>"),
            eos_token=special("eos_token", "</s>"),
            unk_token=special("unk_token", "<unk>"),
            add_bos_token=bool(config.get("add_bos_token", True)),
            add_eos_token=bool(config.get("add_eos_token", False)),
            added_tokens=added,
        )

    def save_pretrained(self, directory: Path | str) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.model_file.resolve() != (directory / MODEL_FILE).resolve():
            shutil.copyfile(self.model_file, directory / MODEL_FILE)
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
            "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token,
            "legacy": False,
            "model_max_length": 4096,
            "added_tokens_decoder": {
                str(index): {"content": token, "special": True} for token, index in sorted(self._added.items())
                if index >= self.sp.get_piece_size()
            },
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    # -- vocabulary ------------------------------------------------------------------------------------------------

    def _add(self, token: str, index: int | None = None) -> int:
        known = self.sp.piece_to_id(token)
        if index is None:
            index = known if self.sp.id_to_piece(known) == token else len(self)
        self._added[token] = index
        return index

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Add tokens that are never split (as TensorRT-LLM adds ``<image>``); returns their ids."""
        ids = [self._added[token] if token in self._added else self._add(token) for token in tokens]
        self._split = self._splitter()
        return ids

    @property
    def special_tokens(self) -> list[str]:
        return [self.bos_token, self.eos_token, self.unk_token, *self._added]

    def _splitter(self) -> re.Pattern[str]:
        tokens = sorted(set(self.special_tokens), key=len, reverse=True)
        return re.compile("(" + "|".join(re.escape(token) for token in tokens) + ")")

    def __len__(self) -> int:
        return max([self.sp.get_piece_size(), *(index + 1 for index in self._added.values())])

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def convert_tokens_to_ids(self, token: str) -> int:
        if token in self._added:
            return self._added[token]
        return int(self.sp.piece_to_id(token))

    def convert_ids_to_tokens(self, index: int) -> str:
        for token, added in self._added.items():
            if added == index:
                return token
        return str(self.sp.id_to_piece(int(index)))

    @property
    def bos_token_id(self) -> int:
        return self.convert_tokens_to_ids(self.bos_token)

    @property
    def eos_token_id(self) -> int:
        return self.convert_tokens_to_ids(self.eos_token)

    @property
    def unk_token_id(self) -> int:
        return self.convert_tokens_to_ids(self.unk_token)

    # -- encoding and decoding -------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """The pieces of ``text`` as the slow ``legacy=False`` Llama tokenizer cuts them (no BOS)."""
        if not text:
            return []
        specials = set(self.special_tokens)
        tokens: list[str] = []
        for part in self._split.split(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")):
            if not part:
                continue
            if part in specials:
                tokens.append(part)
            elif part.startswith((SPIECE_UNDERLINE, " ")):
                tokens.extend(self.sp.encode(self.unk_token + part, out_type=str)[self._unk_length :])
            else:
                tokens.extend(self.sp.encode(part, out_type=str))
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in specials:
            tokens = tokens[1:]
        return tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.convert_tokens_to_ids(token) for token in self.tokenize(text)]
        if add_special_tokens:
            ids = ([self.bos_token_id] if self.add_bos_token else []) + ids + ([self.eos_token_id] if self.add_eos_token else [])
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> TokenizerEncoding:
        return TokenizerEncoding(self.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; special tokens kept verbatim (or skipped), the added prefix space removed."""
        specials = set(self.special_tokens)
        pieces = [self.convert_ids_to_tokens(index) for index in ids]
        if skip_special_tokens:
            pieces = [piece for piece in pieces if piece not in specials]
        if pieces and pieces[0].startswith(SPIECE_UNDERLINE):
            pieces[0] = pieces[0][1:]
        out: list[str] = []
        run: list[str] = []
        for piece in pieces:
            if piece in specials:
                out.append(self.sp.decode_pieces(run) if run else "")
                out.append(piece)
                run = []
            else:
                run.append(piece)
        out.append(self.sp.decode_pieces(run) if run else "")
        return "".join(out)


def load_tokenizer(llm_dir: Path | str) -> Any:
    """The tokenizer of ``llm_dir`` as VILA 355fda9 loads it: SentencePiece ``legacy=False`` for a Llama-2 style
    ``tokenizer.model``, else transformers' own (``tokenizer.json``: Llama-3)."""
    llm_dir = Path(llm_dir)
    config_file = llm_dir / CONFIG_FILE
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    model_file = llm_dir / MODEL_FILE
    if config.get("tokenizer_class") in _LLAMA_CLASSES and model_file.is_file() and is_sentencepiece_model(model_file):
        return SentencePieceLlamaTokenizer.from_directory(llm_dir)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llm_dir)


def tokenize_with_image_sentinels(tokenizer: Any, prompt: str) -> list[int]:
    """VILA's ``tokenizer_image_token`` (355fda9 ``llava/mm_utils.py``): ids with ``IMAGE_TOKEN_INDEX`` at each ``<image>``.

    Each text chunk between placeholders is tokenised on its own with the tokenizer's special tokens. If the first
    chunk starts with BOS it is kept once, and the leading BOS of every later chunk is dropped, so the ids on either side
    of an image are exactly the tokenisation of the text there. (VILA drops the first id of later chunks unconditionally;
    it is always BOS for the Llama tokenizers VILA-M3 ships, and only a BOS is dropped here.)
    """
    chunks = [list(tokenizer(chunk).input_ids) for chunk in prompt.split(IMAGE_PLACEHOLDER)]
    bos = tokenizer.bos_token_id
    keep_bos = bool(chunks[0]) and bos is not None and chunks[0][0] == bos
    ids: list[int] = list(chunks[0])
    for chunk in chunks[1:]:
        ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[1:] if keep_bos and chunk and chunk[0] == bos else chunk)
    return ids
