"""bench/gpu_check.sh end to end in its dry mode (CPU, tiny shapes), so the GPU script cannot rot between GPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_measures_every_part_and_writes_the_summary(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3EDGE_") and k != "OUT"}
    env["PYTHON"] = sys.executable
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["dry_run"] is True and not summary.get("errors"), summary.get("errors")
    assert "gpu_tests" in summary

    parity = {row["network"]: row for row in summary["parity"]}
    assert set(parity) == {"vista3d", "brats_segresnet", "cxr_densenet121", "cxr_resnet50"}
    for row in parity.values():
        assert row["finite"] and row["max_abs"] >= 0
        if "dice_per_label" in row:
            assert all(v is None or 0.0 <= v <= 1.0 for v in row["dice_per_label"].values())
        else:
            assert 0.0 <= row["decision_agreement"] <= 1.0
    speed = {row["network"]: row for row in summary["speed"]}
    assert all(row["eager_ms"] > 0 and "CUDA device" in row["cuda_graph"] for row in speed.values())
    assert any(row.get("compiled_ms", 0) > 0 for row in speed.values())

    vlm = summary["vlm"]
    assert vlm["eager"]["new_tokens"] == 8 and vlm["eager"]["tokens_per_s"] > 0
    assert vlm["eager"]["image_embeddings"] == 196  # the real 384 px / patch 14 path
    assert vlm["compiled"]["new_tokens"] == 8

    check = summary["vlm_backends"]["report"]
    assert check["verdict"] == "agree" and len(check["cases"]) == 6, check
    assert all(case["tokens_equal"] for case in check["cases"])

    rows = {row["expert"]: row for row in summary["backends"]["rows"]}
    assert set(rows) == {"VISTA3D", "BRATS", "CXR"}
    assert all(row["candidate_fell_back"] is None and row["candidate_backend"].startswith("onnxruntime")
               for row in rows.values())
    assert 0.0 <= rows["CXR"]["classification_agreement"] <= 1.0

    markdown = (out / "gpu_check.md").read_text()
    for heading in ("DRY RUN", "parity", "speed", "VILA-M3-8B-shaped", "m3edge vlm check", "vs torch"):
        assert heading in markdown, heading


def test_packed_wheels_are_what_a_pytorch_machine_lacks():
    from bench.gpu.wheels import needed_distributions, pack_command

    needed = {line.split("==")[0] for line in needed_distributions("3.12")}
    assert {"monai", "transformers", "tokenizers", "safetensors", "pytest"} <= needed
    assert not needed & {"torch", "numpy", "sympy", "networkx", "jinja2", "filelock", "fsspec"}
    assert all("==" in line for line in needed_distributions("3.12")), "pinned"
    command = pack_command(Path("wheels"), "3.12", ["monai==1.0"])
    assert command[command.index("--python-version") + 1] == "3.12" and "--no-deps" in command
