"""The transformers pin holds what the VILA loader needs (issue 14 point 11).

The loader calls ``from_pretrained(dtype=...)`` and, in its decoding loop, ``forward(cache=...)`` and ``output.cache``:
transformers 5.24 introduced ``cache`` (5.0 to 5.23 name it ``past_key_values``, and the second decoding step fails
there; checked by hand with 5.0.0 and 5.23.0 installed beside this checkout, and 5.24.0 passing the VILA tests).
"""

from __future__ import annotations

import inspect
import tomllib
from importlib import metadata
from pathlib import Path

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
