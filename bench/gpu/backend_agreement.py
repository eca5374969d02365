"""TensorRT against torch, through the experts themselves: engines built by ``m3edge engines build``, then each expert
run on the same input with each backend; reported: inference time and output agreement (Dice per label for VISTA3D
and BraTS, decision agreement and largest score difference for CXR).

Only where TensorRT is importable and a GPU is present (a real deployment). The dry run takes the same path with
ONNX Runtime as the candidate and no engine build, so this code runs in CI too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.gpu.agreement import decision_agreement, dice_per_label

__all__ = ["write_models", "build_engines", "compare_backends"]

CXR_SUBSET = ("densenet121-res224-all", "resnet50-res512-all")


def write_models(models_dir: Path, tiny: bool) -> None:
    """Random-weight models in the real on-disk formats: production sizes, or the demo's small ones for the dry run."""
    from engines.experts.labels import CXR_MODEL_PATHOLOGIES, CXR_MODEL_RESOLUTION, CXR_PATHOLOGY_GROUPS
    from engines.model_store.cxr_ensemble import write_cxr_ensemble
    from engines.model_store.demo import tiny_cxr_network, write_brats_demo, write_vista3d_demo
    from engines.model_store.layout import ModelsDirectory

    layout = ModelsDirectory(models_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    if tiny:
        write_vista3d_demo(layout.vista3d, encoder_embed_dim=8, patch_size=(32, 32, 32))
        write_brats_demo(layout.brats, init_filters=8, roi_size=(32, 32, 32))
        networks = {name: tiny_cxr_network(name) for name in CXR_SUBSET}
        resolutions = {name: 64 for name in CXR_SUBSET}
    else:
        from bench.gpu.networks import expert_networks

        write_vista3d_demo(layout.vista3d, encoder_embed_dim=48, patch_size=(128, 128, 128))
        write_brats_demo(layout.brats, init_filters=16, roi_size=(240, 240, 160))
        by_name = {spec.name: spec for spec in expert_networks(tiny=False)}
        networks = {CXR_SUBSET[0]: by_name["cxr_densenet121"].build(), CXR_SUBSET[1]: by_name["cxr_resnet50"].build()}
        resolutions = {name: CXR_MODEL_RESOLUTION[name] for name in CXR_SUBSET}
    write_cxr_ensemble(layout.cxr, networks, resolutions=resolutions,
                       pathologies={name: CXR_MODEL_PATHOLOGIES[name] for name in CXR_SUBSET},
                       groups=CXR_PATHOLOGY_GROUPS, version="gpu-check", demo=True)


def build_engines(home: Path, precision: str = "fp16", timeout_s: float = 1800) -> dict:
    """``m3edge engines build`` for the models in ``home`` (a subprocess, exactly as an operator runs it)."""
    env = {**os.environ, "M3EDGE_HOME": str(home)}
    command = [sys.executable, "-c", "from service.cli.main import main; main()", "engines", "build", "--precision", precision]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    return {"command": "m3edge engines build --precision " + precision, "exit_status": result.returncode,
            "seconds": time.perf_counter() - started, "output_tail": (result.stdout + result.stderr)[-2000:]}


def _inputs(tiny: bool) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    rng = np.random.default_rng(5)
    ct_shape, mri_shape, cxr_side = ((24, 24, 20), (4, 24, 24, 24), 128) if tiny else ((256, 256, 160), (4, 240, 240, 155), 1024)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in ct_shape], indexing="ij")
    ct = np.where(x**2 + y**2 < 0.8, 40.0, -1000.0).astype(np.float32)
    ct[(x - 0.2) ** 2 + y**2 + (z + 0.1) ** 2 < 0.1] = 120.0
    ct += rng.normal(0, 15, ct_shape).astype(np.float32)
    ct_affine = np.diag([1.5, 1.5, 1.5, 1.0])
    mri = rng.uniform(200, 800, mri_shape).astype(np.float32)
    cxr = rng.integers(0, 256, (cxr_side, cxr_side), dtype=np.uint8)
    return {"VISTA3D": (ct, ct_affine), "BRATS": (mri, np.eye(4)), "CXR": (cxr, None)}


def _open(expert: str, models_dir: Path, backend: str, engines_dir: Path):
    from engines.backends import EngineCache
    from engines.experts import load_expert

    return load_expert(expert, models_dir, backend, EngineCache(engines_dir))


def _run_measured(expert, volume, affine, tiny: bool):
    from engines.experts.base import ExpertInput

    argument = ("hepatic tumor" if tiny else "everything") if expert.name.value == "VISTA3D" else None
    if not tiny:
        expert.run(ExpertInput(volume, affine), argument)  # warm-up: engine/context creation, cuDNN autotuning
    return expert.run(ExpertInput(volume, affine), argument)


def compare_backends(home: Path, models_dir: Path, candidate: str, tiny: bool, allow) -> list[dict]:
    """Each expert with ``torch`` (reference) and ``candidate``; the candidate must not have fallen back."""
    from engines.experts.labels import BRATS_LABELS, vista3d_label_names

    engines_dir = home / "engines"
    rows = []
    for expert_name, (volume, affine) in _inputs(tiny).items():
        if (reason := allow(f"backends_{expert_name}")) is not None:
            rows.append({"expert": expert_name, "skipped": reason})
            continue
        results = {}
        for backend in ("torch", candidate):
            expert = _open(expert_name, models_dir, backend, engines_dir)
            try:
                results[backend] = _run_measured(expert, volume, affine, tiny)
            finally:
                expert.release()
        reference, other = results["torch"], results[candidate]
        row = {
            "expert": expert_name,
            "reference_backend": reference.backend,
            "candidate_backend": other.backend,
            "candidate_fell_back": other.fallback_reason or None,
            "reference_inference_s": reference.timings.get("inference"),
            "candidate_inference_s": other.timings.get("inference"),
        }
        if row["reference_inference_s"] and row["candidate_inference_s"]:
            row["speedup"] = row["reference_inference_s"] / row["candidate_inference_s"]
        if expert_name == "CXR":
            names = sorted(set(reference.scores) & set(other.scores))
            a = np.array([reference.scores[n] for n in names])
            b = np.array([other.scores[n] for n in names])
            row["classification_agreement"] = decision_agreement(a > 0.5, b > 0.5)
            row["max_score_difference"] = float(np.abs(a - b).max()) if names else None
        else:
            labels = set(np.unique(reference.label_volume)) | set(np.unique(other.label_volume))
            labels = tuple(sorted(int(v) for v in labels if v != 0))
            names = vista3d_label_names() if expert_name == "VISTA3D" else BRATS_LABELS
            dice = dice_per_label(reference.label_volume, other.label_volume, labels)
            row["dice_per_label"] = {f"{label} {names.get(label, '')}".strip(): dice[str(label)] for label in labels}
            row["voxel_agreement"] = float(np.mean(reference.label_volume == other.label_volume))
        rows.append(row)
    return rows
