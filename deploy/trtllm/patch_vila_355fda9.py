"""Make TensorRT-LLM's VILA serving path see requests the way VILA-M3 was trained (VILA 355fda9), then check it.

Four known defects of trtllm-serve for VILA-M3, each fixed in the installed package:

1. ``_torch/models/modeling_vila.py`` ``DownSampleBlock.flat_square`` ends with one more
   ``x = x.permute(0, 2, 1, 3).contiguous()`` (the later NVILA token order): removed, so the 196 tokens of each image come
   column by column as in VILA 355fda9.
2. ``VilaInputProcessor._postprocess`` appends the tokens of ``"\\n"`` (and the tokenizer's BOS with them) after each
   image: removed (VILA 355fda9 does not; the prompt itself carries the newline after ``<image>`` in the training form).
3. ``process_image`` calls ``image.resize((h, w))``, PIL's resize, but trtllm-serve loads images as float CHW tensors in
   0..1 (``load_image(format="pt")``): ``torch.Tensor.resize`` raises (or, when the element counts happen to match,
   silently reshapes). The tensor is turned back into the PIL image it was loaded from (exact for 8-bit images) and PIL
   resizes it (bicubic), as VILA 355fda9 does.
4. ``add_multimodal_placeholders`` (``inputs/utils.py``; ``serve/chat_utils.py`` in older releases) adds one
   ``<image>`` per image in front of the text even when the text already holds them (TensorRT-LLM before PR #12827,
   merged 2026-04-20): 2N placeholders for N images and the feature split fails. Patched to count those present, as
   the PR does; a release with the PR is recognised and left alone.

Every place must be in a form this script knows, unpatched or patched: otherwise it refuses and changes nothing (a
TensorRT-LLM upgrade: read the README again). Running it twice changes nothing the second time.

    python3 patch_vila_355fda9.py [--package-dir DIR]          patch (default: the installed tensorrt_llm package)
    python3 patch_vila_355fda9.py --check [--package-dir DIR]  import the package and check each behaviour
    python3 patch_vila_355fda9.py --version [--package-dir DIR]

Runs inside NVIDIA's TensorRT-LLM container (deploy/trtllm/serve.sh calls it before trtllm-serve starts).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

PACKAGE = "tensorrt_llm"
MODELING_VILA = Path("_torch/models/modeling_vila.py")
PLACEHOLDER_FILES = (Path("inputs/utils.py"), Path("serve/chat_utils.py"))
MARK = "m3edge patch (deploy/trtllm/patch_vila_355fda9.py)"


class PatchError(RuntimeError):
    """A file is not in a form this script knows; nothing was changed."""


# -- 1 and 2: the projector's token order and the newline after each image ---------------------------------------------

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


def _block(source: str, header: str, what: str) -> tuple[int, int]:
    """Start and end offsets of a top-level ``class``/``def`` (up to the next top-level statement)."""
    start = source.find("\n" + header)
    if start < 0:
        raise PatchError(f"no `{header.strip()}` in the file ({what})")
    following = re.compile(r"\n(?=[^\s#])").search(source, start + len(header) + 1)
    return start, (following.start() if following else len(source))


def patch_projector_order(source: str) -> tuple[str, list[str]]:
    start, end = _block(source, "class DownSampleBlock(", "the projector's token order")
    block = source[start:end]
    found = list(_FINAL_PERMUTE.finditer(block))
    if len(found) > 1:
        raise PatchError(f"DownSampleBlock has {len(found)} final permutes; expected one in flat_square")
    if not found:
        if not _PATCHED_TAIL.search(block):
            raise PatchError("DownSampleBlock.flat_square does not end the way TensorRT-LLM 1.x's does; patch it by hand")
        return source, []
    match = found[0]
    block = block[: match.start()] + match.group("keep") + match.group("ret") + block[match.end():]
    return source[:start] + block + source[end:], [
        "DownSampleBlock.flat_square: removed the final permute(0, 2, 1, 3) (355fda9 column-major order)"
    ]


def patch_newline_after_images(source: str) -> tuple[str, list[str]]:
    count = source.count(_END_TOKENS_NEWLINE)
    if count > 1:
        raise PatchError(f"{count} places append '\\n' after image tokens; expected one in VilaInputProcessor._postprocess")
    if count == 1:
        return source.replace(_END_TOKENS_NEWLINE, _END_TOKENS_NONE), [
            "VilaInputProcessor._postprocess: no '\\n' tokens after each image"
        ]
    if _END_TOKENS_NONE not in source:
        raise PatchError("no `end_tokens, end_ids, end_len = ...` line found; patch _postprocess by hand")
    return source, []


# -- 3: process_image on the tensors trtllm-serve loads ------------------------------------------------------------------

_RESIZE = re.compile(r'^(?P<indent>[ \t]+)image = image\.resize\(\(crop_size\["height"\], crop_size\["width"\]\)\)\n',
                     re.MULTILINE)
_PATCHED_RESIZE = 'image = _m3edge_pil_image(image).resize((crop_size["height"], crop_size["width"]))'
_HELPER = f'''def _m3edge_pil_image(image):
    """{MARK}.
    trtllm-serve loads images as float CHW tensors in 0..1; VILA 355fda9 resizes the PIL image (bicubic): give the
    tensor back as that PIL image (exact for 8-bit images)."""
    if isinstance(image, Image.Image):
        return image
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels)


'''


def patch_tensor_resize(source: str) -> tuple[str, list[str]]:
    start, end = _block(source, "def process_image(", "the image resize")
    block = source[start:end]
    if _PATCHED_RESIZE in block and "\ndef _m3edge_pil_image(" in source:
        return source, []
    found = list(_RESIZE.finditer(block))
    if len(found) != 1:
        raise PatchError(f"process_image has {len(found)} `image = image.resize((crop_size[...]))` lines; expected one")
    if not re.search(r"^from PIL import Image$", source, re.MULTILINE) or not re.search(r"^import torch$", source, re.MULTILINE):
        raise PatchError("modeling_vila.py does not import `Image` (PIL) and `torch` at the top; patch process_image by hand")
    match = found[0]
    block = block[: match.start()] + match.group("indent") + _PATCHED_RESIZE + "\n" + block[match.end():]
    return source[:start] + "\n" + _HELPER.rstrip("\n") + "\n\n" + block + source[end:], [
        "process_image: a tensor image is resized as the PIL image it was loaded from (VILA 355fda9: PIL bicubic)"
    ]


# -- 4: placeholders already in the text (TensorRT-LLM PR #12827) ----------------------------------------------------------

_ADD_ALL = re.compile(
    r"^(?P<indent>[ \t]+)placeholders\.extend\(\[placeholder\] \* mm_placeholder_counts\[placeholder\]\)\n", re.MULTILINE
)
_ADD_MISSING = ("placeholders.extend([placeholder] * max(0, mm_placeholder_counts[placeholder]"
                " - text_prompt.count(placeholder)))  # " + MARK + ": TensorRT-LLM PR #12827")


def patch_placeholders(source: str) -> tuple[str, list[str]]:
    start, end = _block(source, "def add_multimodal_placeholders(", "the image placeholders")
    block = source[start:end]
    if "text_prompt.count(placeholder)" in block:  # PR #12827, or this patch
        return source, []
    found = list(_ADD_ALL.finditer(block))
    if len(found) != 1 or "for placeholder in mm_placeholder_counts:" not in block:
        raise PatchError("add_multimodal_placeholders is not the form before TensorRT-LLM PR #12827 this script knows; "
                         "patch it by hand or use a release with the PR")
    match = found[0]
    block = block[: match.start()] + match.group("indent") + _ADD_MISSING + "\n" + block[match.end():]
    return source[:start] + block + source[end:], [
        "add_multimodal_placeholders: placeholders already in the text are counted (TensorRT-LLM PR #12827)"
    ]


# -- the package ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchedFile:
    path: Path
    original: str
    patched: str
    changes: list[str]


def installed_package_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PatchError(f"{PACKAGE} is not installed here: run this inside the TensorRT-LLM container")
    return Path(list(spec.submodule_search_locations)[0])


def placeholder_file(package_dir: Path) -> Path:
    defining = [package_dir / name for name in PLACEHOLDER_FILES
                if (package_dir / name).is_file() and "\ndef add_multimodal_placeholders(" in (package_dir / name).read_text()]
    if len(defining) != 1:
        raise PatchError(f"add_multimodal_placeholders is defined in {len(defining)} of "
                         f"{', '.join(map(str, PLACEHOLDER_FILES))}; expected exactly one")
    return defining[0]


def plan(package_dir: Path) -> list[PatchedFile]:
    """Every file with its patched text, computed before anything is written (all or nothing)."""
    vila = package_dir / MODELING_VILA
    if not vila.is_file():
        raise PatchError(f"{vila} is missing: this TensorRT-LLM does not ship VILA (llava_llama)")
    files = []
    for path, steps in ((vila, (patch_projector_order, patch_newline_after_images, patch_tensor_resize)),
                        (placeholder_file(package_dir), (patch_placeholders,))):
        original = text = path.read_text(encoding="utf-8")
        changes: list[str] = []
        for step in steps:
            try:
                text, changed = step(text)
            except PatchError as exc:
                raise PatchError(f"{path}: {exc}") from None
            changes += changed
        files.append(PatchedFile(path, original, text, changes))
    return files


def version(package_dir: Path) -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        match = re.search(r'__version__ = "([^"]+)"', (package_dir / "version.py").read_text()) if (
            package_dir / "version.py").is_file() else None
        return match.group(1) if match else "unknown"


# -- checks, on the imported package -------------------------------------------------------------------------------------


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


def _call(function, *arguments, **keywords):
    """Call with the keywords ``function`` accepts (their signatures differ between releases)."""
    accepted = inspect.signature(function).parameters
    return function(*arguments, **{name: value for name, value in keywords.items() if name in accepted})


def tensor_resize_holds(modeling_vila) -> bool:
    """process_image on a float tensor equals process_image on the PIL image it was loaded from."""
    import numpy as np
    import torch
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    processor = SimpleNamespace(size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    config = SimpleNamespace(image_aspect_ratio="resize")
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255  # what load_image(format="pt") gives
    try:
        from_tensor = _call(modeling_vila.process_image, tensor, processor, config, use_fast=True, device="cpu")
    except (RuntimeError, AttributeError, TypeError):
        return False
    from_picture = _call(modeling_vila.process_image, Image.fromarray(pixels), processor, config, use_fast=True, device="cpu")
    return tuple(from_tensor.shape) == (3, 384, 384) and bool(torch.allclose(from_tensor, from_picture, atol=1e-5))


def placeholders_hold(function) -> bool:
    """Two images whose two placeholders are already in the text get no more (a release whose function takes other
    arguments than those known: the counting statement of PR #12827 must be in its source)."""
    text, counts = "A <image> B <image> C", {"<image>": 2}
    parameters = list(inspect.signature(function).parameters)
    try:
        result = function("llava_llama", text, counts) if parameters[0] == "model_type" else function(text, counts)
    except TypeError:
        return "text_prompt.count(placeholder)" in inspect.getsource(function)
    return result.count("<image>") == 2


def check(package_dir: Path) -> list[str]:
    """The known defects still present in the importable package (empty: none)."""
    sys.path.insert(0, str(package_dir.parent))
    try:
        modeling_vila = importlib.import_module(f"{PACKAGE}._torch.models.modeling_vila")
        defects = []
        if not column_major_order_holds(modeling_vila.DownSampleBlock()):
            defects.append("the projector emits the permuted (NVILA) token order, not VILA 355fda9's")
        if _END_TOKENS_NONE not in inspect.getsource(modeling_vila.VilaInputProcessor._postprocess):
            defects.append("'\\n' tokens are appended after each image")
        if not tensor_resize_holds(modeling_vila):
            defects.append("process_image fails on (or reshapes) the tensors trtllm-serve loads images as")
        relative = placeholder_file(package_dir).relative_to(package_dir).with_suffix("")
        module = importlib.import_module(".".join((PACKAGE, *relative.parts)))
        if not placeholders_hold(module.add_multimodal_placeholders):
            defects.append("placeholders already in the prompt are added again (before TensorRT-LLM PR #12827)")
        return defects
    finally:
        sys.path.remove(str(package_dir.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package-dir", type=Path, help="the tensorrt_llm package folder (default: the installed one)")
    parser.add_argument("--check", action="store_true", help="import the package and check each behaviour")
    parser.add_argument("--version", action="store_true", help="print the TensorRT-LLM version")
    args = parser.parse_args(argv)
    try:
        package_dir = args.package_dir or installed_package_dir()
        if args.version:
            print(version(package_dir))
            return 0
        if args.check:
            defects = check(package_dir)
            for defect in defects:
                print(f"TensorRT-LLM {version(package_dir)}: {defect}", file=sys.stderr)
            if not defects:
                print("VILA serving path: VILA 355fda9 projector order, no '\\n' after images, tensor images resized as "
                      "PIL images, placeholders counted")
            return 1 if defects else 0
        files = plan(package_dir)
    except PatchError as exc:
        print(f"patch_vila_355fda9: {exc}", file=sys.stderr)
        return 1
    for file in files:
        if file.changes:
            file.path.write_text(file.patched, encoding="utf-8")
        for change in file.changes or ["already patched; nothing changed"]:
            print(f"{file.path}: {change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
