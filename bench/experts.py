"""Benchmark of the three experts per backend: preprocessing / inference / postprocessing, and ONNX Runtime / torch.

``python -m bench.experts`` writes the demo models (real formats and pipelines, small random-weight networks: the
numbers show the pipeline's costs on this machine, not those of the real networks) into a temporary folder, or
uses ``--models DIR``, and runs each expert on inputs of realistic size: a 512 x 512 x 300 CT (0.7 x 0.7 x 1 mm),
a 4 x 240 x 240 x 155 brain MRI (1 mm), a 2048 x 2048 radiograph. The peer measured in the same run is the torch
backend: the ratio printed is ONNX Runtime time / torch time per stage (below 1: ONNX Runtime is faster).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

STAGES = ("preprocess", "inference", "postprocess")
BACKENDS = ("torch", "onnxruntime")


def _ct(shape=(512, 512, 300)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1.0
    volume = np.full(shape, -1000.0, np.float32)
    volume[body] = 40.0
    volume += rng.normal(0, 20, size=shape).astype(np.float32)
    affine = np.diag([-0.7, -0.7, 1.0, 1.0])
    affine[:3, 3] = (180.0, 180.0, -150.0)
    return volume, affine


def _mri(shape=(240, 240, 155)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = (x / 0.7) ** 2 + (y / 0.8) ** 2 + (z / 0.75) ** 2 <= 1.0
    volume = np.zeros((4, *shape), np.float32)
    volume[:, brain] = rng.uniform(200, 800, size=(4, int(brain.sum()))).astype(np.float32)
    return volume, np.eye(4)


def _cxr(shape=(2048, 2048)) -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, size=shape, dtype=np.uint8)


def _measure(expert_class, folder: Path, backend: str, inputs, warmup, argument, repeat: int) -> tuple[dict[str, float], str]:
    """Load, run once on a small input of the same kind (first-call costs), then time ``repeat`` runs."""
    expert = expert_class(folder, backend=backend)
    try:
        expert.run(warmup, argument)
        runs = [expert.run(inputs, argument) for _ in range(repeat)]
    finally:
        expert.release()
    return {stage: statistics.median(run.timings[stage] for run in runs) for stage in STAGES}, runs[0].backend


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="models directory (default: demo models in a temporary folder)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per expert and backend (median reported)")
    parser.add_argument("--ct-argument", default="hepatic tumor", help="VISTA3D label group (default: hepatic tumor)")
    parser.add_argument("--only", choices=("vista3d", "brats", "cxr"), action="append", help="run only these experts")
    args = parser.parse_args(argv)

    import torch

    from engines.experts.base import ExpertInput
    from engines.experts.brats import BratsExpert
    from engines.experts.cxr import CxrExpert
    from engines.experts.vista3d import Vista3DExpert
    from engines.model_store.demo import write_demo_models
    from engines.model_store.layout import ModelsDirectory

    with tempfile.TemporaryDirectory(prefix="m3edge-bench-") as scratch:
        models_dir = args.models
        if models_dir is None:
            models_dir = Path(scratch) / "models"
            write_demo_models(models_dir, vila=False)
            print("models: DEMO (tiny random-weight networks in the real formats and pipelines)")
        else:
            print(f"models: {models_dir}")
        layout = ModelsDirectory(models_dir)
        device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
        print(f"device: {device}; torch threads {torch.get_num_threads()}; repeat {args.repeat} (median)")
        ct, ct_affine = _ct()
        mri, mri_affine = _mri()
        small_ct, small_mri = _ct((96, 96, 60)), _mri((64, 64, 48))
        cases = {
            "vista3d": (Vista3DExpert, layout.vista3d, ExpertInput(ct, ct_affine), ExpertInput(*small_ct),
                        args.ct_argument, "CT 512x512x300"),
            "brats": (BratsExpert, layout.brats, ExpertInput(mri, mri_affine), ExpertInput(*small_mri), None,
                      "MRI 4x240x240x155"),
            "cxr": (CxrExpert, layout.cxr, ExpertInput(_cxr()), ExpertInput(_cxr((256, 256))), None, "CXR 2048x2048"),
        }  # fmt: skip
        header = f"{'expert':<9}{'input':<19}{'backend':<17}" + "".join(f"{stage + ' s':>14}" for stage in STAGES)
        print(header)
        print("-" * len(header))
        for name, (expert_class, folder, inputs, warmup, argument, label) in cases.items():
            if args.only and name not in args.only:
                continue
            timings = {}
            for backend in BACKENDS:
                timings[backend], used = _measure(expert_class, folder, backend, inputs, warmup, argument, args.repeat)
                row = "".join(f"{timings[backend][stage]:>14.3f}" for stage in STAGES)
                print(f"{name:<9}{label:<19}{used:<17}{row}", flush=True)
            ratio = "".join(
                f"{timings['onnxruntime'][stage] / max(timings['torch'][stage], 1e-9):>14.2f}" for stage in STAGES
            )
            print(f"{name:<9}{'':<19}{'ratio ort/torch':<17}{ratio}", flush=True)
        print("pre/postprocessing are the same code on both backends (MONAI/numpy on the CPU): their ratio shows noise;")
        print("the backend runs inference (VISTA3D: the image encoder only, decoder and class head stay in torch).")


if __name__ == "__main__":
    main()
