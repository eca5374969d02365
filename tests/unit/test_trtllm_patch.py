"""deploy/trtllm: the patch for TensorRT-LLM's VILA serving path and the start script that checks it (issue 14, 1-3).

TensorRT-LLM needs a GPU and NVIDIA's container, so the package patched here is a TEST DOUBLE: a ``tensorrt_llm``
folder whose few modules have, at the places the patch edits, the statements of TensorRT-LLM's files (read from the
releases: ``_torch/models/modeling_vila.py``, ``inputs/utils.py``, ``serve/chat_utils.py`` in older ones), around small
working bodies written for these tests, so that the patch's ``--check`` can import and exercise it. A fake
``trtllm-serve`` on PATH records that serve.sh started it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PATCH = ROOT / "deploy" / "trtllm" / "patch_vila_355fda9.py"
SERVE = ROOT / "deploy" / "trtllm" / "serve.sh"

MODELING_VILA = '''"""TEST DOUBLE of tensorrt_llm/_torch/models/modeling_vila.py (the statements the m3edge patch edits)."""
import numpy
import torch
import torch.nn as nn
from PIL import Image


def preprocess_dispatch(image, image_processor, use_fast=True, device=None, dtype=None):
    if isinstance(image, Image.Image):
        image = torch.from_numpy(numpy.asarray(image).copy()).permute(2, 0, 1).float() / 255
    size = (image_processor.size["height"], image_processor.size["width"])
    if tuple(image.shape[1:]) != size:
        image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]
    mean = torch.tensor(image_processor.image_mean)[:, None, None]
    return (image - mean) / torch.tensor(image_processor.image_std)[:, None, None]


def process_image(image, image_processor, model_config, enable_dynamic_res=False, use_fast=True, device=None):
    crop_size = image_processor.size
    if model_config.image_aspect_ratio == "resize":
        # VILA 1.0
        image = image.resize((crop_size["height"], crop_size["width"]))
    return preprocess_dispatch(image, image_processor, use_fast=use_fast, device=device)


class DownSampleBlock(nn.Module):

    def forward(self, x):
        side = int(x.shape[1] ** 0.5)
        x = torch.nn.functional.pad(x.reshape(x.shape[0], side, side, -1), (0, 0, 0, side % 2, 0, side % 2))
        x = self.flat_square(x)
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def flat_square(self, x):
        n, w, h, c = x.size()
        x = x.reshape(n, w, h // 2, c * 2).permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h / 2), int(w / 2), int(c * 4))
        x = x.permute(0, 2, 1, 3).contiguous()
        return x


class VilaInputProcessor:

    def _postprocess(self, input_ids, mm_features):
        start_tokens, start_ids, start_len = None, None, 0
        end_tokens, end_ids, end_len = "\\n", None, 0
        return input_ids, end_tokens
'''

BEFORE_PR_12827 = '''"""TEST DOUBLE of tensorrt_llm/inputs/utils.py before PR #12827 (add_multimodal_placeholders only)."""


def add_multimodal_placeholders(model_type, text_prompt, mm_placeholder_counts):
    """Add multimodal placeholders to the text prompt."""
    placeholders = []
    for placeholder in mm_placeholder_counts:
        placeholders.extend([placeholder] * mm_placeholder_counts[placeholder])
    return "\\n".join(placeholders + [text_prompt])
'''

WITH_PR_12827 = '''"""TEST DOUBLE of tensorrt_llm/inputs/utils.py with PR #12827 (add_multimodal_placeholders only)."""


def add_multimodal_placeholders(model_type, text_prompt, mm_placeholder_counts):
    """Add multimodal placeholders to the text prompt, counting those already there."""
    placeholders = []
    for placeholder, count in mm_placeholder_counts.items():
        existing = text_prompt.count(placeholder)
        placeholders.extend([placeholder] * max(0, count - existing))
    return "\\n".join(placeholders + [text_prompt])
'''

# Older releases kept it in serve/chat_utils.py, without the model type.
OLD_CHAT_UTILS = BEFORE_PR_12827.replace("(model_type, text_prompt,", "(text_prompt,").replace(
    "tensorrt_llm/inputs/utils.py", "tensorrt_llm/serve/chat_utils.py")


def write_package(root: Path, placeholders: str = BEFORE_PR_12827, where: str = "inputs/utils.py",
                  modeling_vila: str = MODELING_VILA, version: str = "1.0.0") -> Path:
    package = root / "tensorrt_llm"
    files = {"__init__.py": "", "version.py": f'__version__ = "{version}"\n', "_torch/__init__.py": "",
             "_torch/models/__init__.py": "", "_torch/models/modeling_vila.py": modeling_vila,
             "inputs/__init__.py": "", "serve/__init__.py": "", where: placeholders}
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


def snapshot(package: Path) -> dict[str, str]:
    return {str(path.relative_to(package)): path.read_text() for path in sorted(package.rglob("*.py"))}


def run_patch(package: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PATCH), "--package-dir", str(package), *arguments],
                          capture_output=True, text=True, timeout=120, cwd=package.parent)


@pytest.fixture
def package(tmp_path) -> Path:
    return write_package(tmp_path)


def test_the_unpatched_release_shows_all_four_defects(package):
    result = run_patch(package, "--check")
    assert result.returncode == 1
    for defect in ("permuted (NVILA) token order", "'\\n' tokens are appended", "process_image fails",
                   "placeholders already in the prompt are added again"):
        assert f"TensorRT-LLM 1.0.0: " in result.stderr and defect in result.stderr, defect


def test_patching_fixes_each_defect_and_a_second_run_changes_nothing(package):
    first = run_patch(package)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(str(package)) == 4  # four changes, each named with its file
    patched = snapshot(package)
    check = run_patch(package, "--check")
    assert check.returncode == 0, check.stderr
    second = run_patch(package)
    assert second.returncode == 0 and second.stdout.count("already patched; nothing changed") == 2
    assert snapshot(package) == patched


def test_the_projector_patch_removes_only_flat_squares_final_permute(package):
    run_patch(package)
    source = (package / "_torch/models/modeling_vila.py").read_text()
    block = source.split("class DownSampleBlock")[1].split("class VilaInputProcessor")[0]
    assert block.count("permute(0, 2, 1, 3)") == 1
    assert "int(c * 4))\n        return x" in block
    assert "end_tokens, end_ids, end_len = None, None, 0" in source


def test_a_release_with_pr_12827_keeps_its_own_placeholder_code(tmp_path):
    package = write_package(tmp_path, placeholders=WITH_PR_12827, version="1.3.0rc14")
    result = run_patch(package)
    assert result.returncode == 0, result.stderr
    assert (package / "inputs/utils.py").read_text() == WITH_PR_12827
    assert run_patch(package, "--check").returncode == 0


def test_an_older_release_with_the_function_in_chat_utils_is_patched_too(tmp_path):
    package = write_package(tmp_path, placeholders=OLD_CHAT_UTILS, where="serve/chat_utils.py")
    assert run_patch(package).returncode == 0
    assert "text_prompt.count(placeholder)" in (package / "serve/chat_utils.py").read_text()
    assert run_patch(package, "--check").returncode == 0


UNKNOWN_FORMS = {
    "projector": ("modeling_vila", "x = x.view(n, int(h / 2), int(w / 2), int(c * 4))\n        x = x.permute",
                  "x = x.reshape(n, int(h / 2), int(w / 2), int(c * 4))\n        x = x.permute"),
    "newline": ("modeling_vila", 'end_tokens, end_ids, end_len = "\\n", None, 0', 'end_tokens = "\\n"'),
    "resize": ("modeling_vila", 'image = image.resize((crop_size["height"], crop_size["width"]))',
               'image = image.resize((crop_size["width"], crop_size["height"]))'),
    "placeholders": ("placeholders", "for placeholder in mm_placeholder_counts:",
                     "for placeholder in sorted(mm_placeholder_counts):"),
}


@pytest.mark.parametrize("place", list(UNKNOWN_FORMS))
def test_a_file_in_an_unknown_form_is_refused_and_nothing_is_changed(tmp_path, place):
    which, old, new = UNKNOWN_FORMS[place]
    texts = {"modeling_vila": MODELING_VILA, "placeholders": BEFORE_PR_12827}
    assert old in texts[which]
    texts[which] = texts[which].replace(old, new, 1)
    package = write_package(tmp_path, placeholders=texts["placeholders"], modeling_vila=texts["modeling_vila"])
    before = snapshot(package)
    result = run_patch(package)
    assert result.returncode == 1 and "patch_vila_355fda9:" in result.stderr
    assert snapshot(package) == before  # all or nothing: not even the other file


def test_a_function_defined_in_two_places_is_refused(tmp_path):
    package = write_package(tmp_path)
    (package / "serve/chat_utils.py").write_text(OLD_CHAT_UTILS)
    result = run_patch(package)
    assert result.returncode == 1 and "defined in 2 of" in result.stderr


def test_a_release_without_vila_is_refused(tmp_path):
    package = write_package(tmp_path)
    (package / "_torch/models/modeling_vila.py").unlink()
    result = run_patch(package)
    assert result.returncode == 1 and "does not ship VILA" in result.stderr


# -- serve.sh ------------------------------------------------------------------------------------------------------------


def _serve(tmp_path: Path, checkpoint: str = "/models/vila1.5-8b-m3") -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "trtllm-serve"  # TEST DOUBLE of trtllm-serve: says it was started and with what
    fake.write_text('#!/bin/sh\necho "fake trtllm-serve started with: $*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable,
                   "PYTHONPATH": str(tmp_path)}
    return subprocess.run(["bash", str(SERVE), checkpoint, "--port", "8000"], capture_output=True, text=True,
                          timeout=180, env=environment)


def test_serve_patches_checks_and_starts_the_server(package, tmp_path):
    result = _serve(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "serve.sh: TensorRT-LLM 1.0.0" in result.stdout
    assert "fake trtllm-serve started with: /models/vila1.5-8b-m3 --port 8000" in result.stdout
    again = _serve(tmp_path)  # a restart: nothing left to patch
    assert again.returncode == 0 and "already patched" in again.stdout


def test_serve_refuses_to_start_a_release_it_cannot_vouch_for(tmp_path):
    write_package(tmp_path, placeholders=BEFORE_PR_12827.replace("for placeholder in mm_placeholder_counts:",
                                                                  "for placeholder in list(mm_placeholder_counts):"))
    result = _serve(tmp_path)
    assert result.returncode == 70
    assert "TensorRT-LLM 1.0.0: its VILA files are not in a form" in result.stderr
    assert "not starting trtllm-serve" in result.stderr and "M3EDGE_VLM_BACKEND=vila" in result.stderr
    assert "fake trtllm-serve started" not in result.stdout


def test_serve_refuses_when_a_defect_survives_the_patch(tmp_path):
    # The patch knows flat_square's statements, but this release transposes the grid before it: still the NVILA order.
    transposed = MODELING_VILA.replace("        x = self.flat_square(x)\n", "        x = self.flat_square(x.transpose(1, 2))\n")
    assert transposed != MODELING_VILA
    write_package(tmp_path, modeling_vila=transposed)
    result = _serve(tmp_path)
    assert result.returncode == 70, result.stdout + result.stderr
    assert "permuted (NVILA) token order" in result.stderr
    assert "a known defect of its VILA path is still present" in result.stderr
    assert "fake trtllm-serve started" not in result.stdout


def test_serve_refuses_a_folder_name_without_a_template_key(tmp_path):
    result = subprocess.run(["bash", str(SERVE), str(tmp_path / "vila-m3-8b")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 64 and "names no VILA template key" in result.stderr


def test_order_check_tells_the_355fda9_projector_from_the_permuted_one():
    import torch

    from engines.vlm.projector import TokenOrder, merge_2x2_blocks

    sys.path.insert(0, str(PATCH.parent))
    try:
        import patch_vila_355fda9
    finally:
        sys.path.remove(str(PATCH.parent))

    class Block(torch.nn.Module):
        def __init__(self, order):
            super().__init__()
            self.order = order

        def forward(self, x):
            return merge_2x2_blocks(x, self.order)

    assert patch_vila_355fda9.column_major_order_holds(Block(TokenOrder.VILA_355FDA9))
    assert not patch_vila_355fda9.column_major_order_holds(Block(TokenOrder.ROW_MAJOR))
