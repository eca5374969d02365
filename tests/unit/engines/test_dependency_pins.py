"""The transformers pin holds what the VILA loader needs (issue 14 point 11).

The loader calls ``from_pretrained(dtype=...)`` and, in its decoding loop, ``forward(cache=...)`` and ``output.cache``:
transformers 5.24 introduced ``cache`` (5.0 to 5.23 name it ``past_key_values``, and the second decoding step fails
there; checked by hand with 5.0.0 and 5.23.0 installed beside this checkout). The lower bound itself is installed
from the package registry and runs the VILA model tests (a slow test).
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[3]


def _requirement(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (found,) = [Requirement(text) for text in project["dependencies"] if Requirement(text).name == name]
    return found


def test_transformers_pin_is_5_24_up_to_6():
    specifier = _requirement("transformers").specifier
    assert Version("5.24.0") in specifier and Version("5.25.0") in specifier
    assert Version("5.23.0") not in specifier and Version("4.57.6") not in specifier
    assert Version("6.0.0") not in specifier


def test_the_installed_transformers_satisfies_the_pin():
    assert Version(metadata.version("transformers")) in _requirement("transformers").specifier


def test_the_calls_the_loader_makes_exist_in_the_installed_transformers():
    from transformers import LlamaForCausalLM
    from transformers.modeling_outputs import CausalLMOutputWithPast

    assert "cache" in inspect.signature(LlamaForCausalLM.forward).parameters
    assert "cache" in CausalLMOutputWithPast.__dataclass_fields__
    source = (ROOT / "engines" / "vlm" / "model.py").read_text()
    assert "cache=out.cache" in source and "from_pretrained(llm_dir, dtype=" in source


def test_sentencepiece_is_a_dependency_and_importable():
    assert _requirement("sentencepiece").specifier.contains(metadata.version("sentencepiece"))
    import sentencepiece  # noqa: F401


@pytest.mark.slow
def test_the_vila_model_tests_pass_on_the_pins_lower_bound(tmp_path):
    """The lowest transformers the pin admits, installed from the package registry beside this checkout (shadowing
    the venv's own on PYTHONPATH), runs the in-process VILA tests: the two-step greedy decode included."""
    (lower,) = [spec.version for spec in _requirement("transformers").specifier if spec.operator == ">="]
    target = tmp_path / "lower"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                                f"transformers=={lower}"], capture_output=True, text=True, timeout=600)
    if installed.returncode != 0 and "No matching distribution" not in installed.stderr:
        pytest.skip(f"the package registry cannot be reached: {installed.stderr.strip()[-200:]}")
    assert installed.returncode == 0, installed.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    version = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert Version(version.stdout.strip()) == Version(lower), version.stderr
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/unit/engines/test_vlm_model.py", "tests/unit/engines/test_vlm_tokenizer.py"],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:]
