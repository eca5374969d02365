"""What the GPU check needs beyond a CUDA PyTorch machine, whether it is there, and how to carry it there offline.

The check needs ``monai``, ``transformers``, ``sentencepiece``, ``httpx`` and ``pillow`` (and what they require), and for the ``gpu`` marker tests ``pytest``
and what the suite's conftest imports (``pydicom``, ``sqlalchemy``, ``alembic``).
A CUDA PyTorch machine has torch and what torch requires (filelock, typing-extensions, sympy, networkx, jinja2,
fsspec, triton, the nvidia-* libraries) and numpy; everything else is packed: the closure of the roots' requirements
(markers evaluated for the target's Python), pinned to the versions installed here, the ones CI runs with.

    python -m bench.gpu.wheels list [PYTHON_VERSION]           the pinned distributions, one a line
    python -m bench.gpu.wheels pack DIR [PYTHON_VERSION ...]   pip download of their wheels (manylinux x86_64)

For one CPython version the wheels come to about 49 MiB, under the 64 MiB a lent machine accepts; 3.11 and 3.12
together are about 68 MiB (Pillow and sentencepiece, for ``m3edge vlm check``, made it grow past 64), so pack for the
machine's version (``python3 --version`` there). 3.10 is out: m3edge and these pins need 3.11 or later.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

__all__ = ["ROOTS", "BASELINE_ROOTS", "needed_distributions", "missing_distributions", "pack_command", "pack"]

ROOTS = ("monai", "transformers", "sentencepiece", "httpx", "pillow", "pytest", "pytest-timeout", "pydicom", "sqlalchemy",
         "alembic")
BASELINE_ROOTS = ("torch", "numpy", "pip", "setuptools", "wheel")
ALWAYS_PACK = ("typing-extensions",)  # in torch's closure, but pydantic needs a recent one: 45 kB of insurance
_IMPORT_NAMES = {"monai": "monai", "transformers": "transformers", "pytest": "pytest", "tokenizers": "tokenizers",
                 "safetensors": "safetensors"}


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _closure(roots: tuple[str, ...], python_version: str) -> dict[str, str]:
    """Canonical name -> installed version, for ``roots`` and everything they require (installed here)."""
    from packaging.requirements import Requirement

    environment = {"python_version": python_version, "python_full_version": f"{python_version}.0", "extra": ""}
    found: dict[str, str] = {}
    pending = list(roots)
    while pending:
        name = _canonical(pending.pop())
        if name in found:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[name] = distribution.version
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                pending.append(requirement.name)
    return found


def needed_distributions(python_version: str | None = None) -> list[str]:
    """``name==version`` for what the check needs beyond the baseline (torch's closure and numpy)."""
    version = python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"
    baseline = _closure(BASELINE_ROOTS, version)
    return sorted(f"{name}=={pinned}" for name, pinned in _closure(ROOTS, version).items()
                  if (name not in baseline or name in ALWAYS_PACK) and not name.startswith("nvidia-"))


def missing_distributions() -> list[str]:
    """The check's direct needs that cannot be imported in this interpreter."""
    return [name for name, module in _IMPORT_NAMES.items() if importlib.util.find_spec(module) is None]


def pack_command(folder: Path, python_version: str, distributions: list[str]) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", python_version, "--implementation", "cp", "--abi", f"cp{python_version.replace('.', '')}",
            "--abi", "abi3", "--abi", "none", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64", "--platform", "any", "--dest", str(folder), *distributions]


def pack(folder: Path, python_versions: list[str]) -> int:
    """Download the wheels for each Python version into ``folder``; returns their total size in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for version in python_versions:
        subprocess.run(pack_command(folder, version, needed_distributions(version)), check=True)
    return sum(path.stat().st_size for path in folder.glob("*.whl"))


def main(argv: list[str]) -> None:
    if argv[:1] == ["list"]:
        print("\n".join(needed_distributions(argv[1] if len(argv) > 1 else None)))
    elif argv[:1] == ["pack"] and len(argv) >= 2:
        versions = argv[2:] or ["3.11", "3.12"]
        size = pack(Path(argv[1]), versions)
        print(f"{argv[1]}: {size / 2**20:.1f} MiB of wheels for CPython {', '.join(versions)}")
        if size > 64 * 2**20:
            raise SystemExit("over 64 MiB: a lent machine will not take it; pack for its Python version only")
    else:
        raise SystemExit("usage: python -m bench.gpu.wheels list [PYTHON_VERSION] | pack DIR [PYTHON_VERSION ...]")


if __name__ == "__main__":
    main(sys.argv[1:])
