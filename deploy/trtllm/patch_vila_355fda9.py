"""Make TensorRT-LLM's VILA model see images the way VILA-M3 was trained (VILA 355fda9), then check it.

TensorRT-LLM 1.x's ``tensorrt_llm/_torch/models/modeling_vila.py`` has the later (NVILA) projector and input code:
``DownSampleBlock.flat_square`` ends with one more ``x = x.permute(0, 2, 1, 3).contiguous()`` (row-major tokens) and
``VilaInputProcessor._postprocess`` appends the tokens of "\\n" after each image. VILA-M3 was trained without both.
This script removes them from the installed file (idempotent: an already patched file is left alone) and refuses,
changing nothing, when the file does not have the form it knows (a TensorRT-LLM upgrade: read the README again).

    python3 patch_vila_355fda9.py [--file PATH]   patch (default: the installed modeling_vila.py)
    python3 patch_vila_355fda9.py --check         import DownSampleBlock and check the 355fda9 (column-major) order

Runs inside NVIDIA's TensorRT-LLM container (deploy/trtllm/serve.sh calls both before trtllm-serve starts).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
from pathlib import Path

MODULE = "tensorrt_llm._torch.models.modeling_vila"

# The last two statements of the NVILA flat_square: the final permute is what 355fda9 does not have.
_FINAL_PERMUTE = re.compile(
    r"(?P<keep>^(?P<indent>[ \t]+)x = x\.view\(n, int\(h / 2\), int\(w / 2\), int\(c \* 4\)\)\n)"
    r"(?P=indent)x = x\.permute\(0, 2, 1, 3\)\.contiguous\(\)\n"
    r"(?P<ret>(?P=indent)return x\n)",
    re.MULTILINE,
)
_PATCHED_TAIL = re.compile(
    r"^(?P<indent>[ \t]+)x = x\.view\(n, int\(h / 2\), int\(w / 2\), int\(c \* 4\)\)\n(?P=indent)return x\n", re.MULTILINE
)
_END_TOKENS_NEWLINE = 'end_tokens, end_ids, end_len = "\\n", None, 0'
_END_TOKENS_NONE = "end_tokens, end_ids, end_len = None, None, 0"


class PatchError(RuntimeError):
    """The file is not in a form this script knows; nothing was changed."""


def _downsample_block(source: str) -> tuple[int, int]:
    """Start and end offsets of ``class DownSampleBlock`` (up to the next top-level class)."""
    start = source.find("\nclass DownSampleBlock(")
    if start < 0:
        raise PatchError("no `class DownSampleBlock` in the file")
    following = source.find("\nclass ", start + 1)
    return start, (following if following >= 0 else len(source))


def patch_source(source: str) -> tuple[str, list[str]]:
    """The patched text and what was changed (empty when already patched)."""
    changes: list[str] = []
    start, end = _downsample_block(source)
    block = source[start:end]
    found = list(_FINAL_PERMUTE.finditer(block))
    if len(found) > 1:
        raise PatchError(f"DownSampleBlock has {len(found)} final permutes; expected one in flat_square")
    if found:
        match = found[0]
        block = block[: match.start()] + match.group("keep") + match.group("ret") + block[match.end() :]
        changes.append("DownSampleBlock.flat_square: removed the final permute(0, 2, 1, 3) (355fda9 column-major order)")
    elif not _PATCHED_TAIL.search(block):
        raise PatchError("DownSampleBlock.flat_square does not end the way TensorRT-LLM 1.x's does; patch it by hand")
    source = source[:start] + block + source[end:]

    count = source.count(_END_TOKENS_NEWLINE)
    if count > 1:
        raise PatchError(f"{count} places append '\\n' after image tokens; expected one in VilaInputProcessor._postprocess")
    if count == 1:
        source = source.replace(_END_TOKENS_NEWLINE, _END_TOKENS_NONE)
        changes.append("VilaInputProcessor._postprocess: no '\\n' tokens after each image")
    elif _END_TOKENS_NONE not in source:
        raise PatchError("no `end_tokens, end_ids, end_len = ...` line found; patch _postprocess by hand")
    return source, changes


def column_major_order_holds(block: object) -> bool:
    """True when ``block`` (a DownSampleBlock instance) merges 2x2 patches and emits them column by column.

    Patch (row r, column c) of a 27x27 grid carries the value r * 27 + c + 1; merged token t = c' * 14 + r' must start
    with patch (2r', 2c') (the 28th row and column are zero padding).
    """
    import torch

    side, merged = 27, 14
    values = torch.arange(1, side * side + 1, dtype=torch.float32).reshape(1, side * side, 1)
    tokens = block(values)  # (1, 196, 4)
    if tuple(tokens.shape) != (1, merged * merged, 4):
        return False
    for column in range(merged):
        for row in range(merged):
            expected = float((2 * row) * side + (2 * column) + 1)
            if float(tokens[0, column * merged + row, 0]) != expected:
                return False
    return True


def _installed_file() -> Path:
    spec = importlib.util.find_spec(MODULE)
    if spec is None or spec.origin is None:
        raise PatchError(f"{MODULE} is not installed here: run this inside the TensorRT-LLM container")
    return Path(spec.origin)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, help="modeling_vila.py to patch (default: the installed one)")
    parser.add_argument("--check", action="store_true", help="only check the installed DownSampleBlock's token order")
    args = parser.parse_args(argv)
    try:
        if args.check:
            block = importlib.import_module(MODULE).DownSampleBlock()
            if not column_major_order_holds(block):
                print("projector order: NOT VILA 355fda9 (still the permuted NVILA order); do not serve VILA-M3", file=sys.stderr)
                return 1
            print("projector order: VILA 355fda9")
            return 0
        path = args.file or _installed_file()
        patched, changes = patch_source(path.read_text(encoding="utf-8"))
    except PatchError as exc:
        print(f"patch_vila_355fda9: {exc}", file=sys.stderr)
        return 1
    if changes:
        path.write_text(patched, encoding="utf-8")
    for change in changes or ["already patched; nothing changed"]:
        print(f"{path}: {change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
