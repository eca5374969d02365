"""``python -m bench.gpu``: the GPU validation run (``bench/gpu_check.sh`` calls it), within a time budget.

Parts, in order (each one's failure is recorded and the run goes on): the suite's ``gpu`` marker tests; CUDA-vs-CPU
parity of each expert network; expert speed (eager, CUDA graph, ``torch.compile``); the VILA-M3-8B-shaped model;
``m3edge vlm check`` (against the configured trtllm-serve where one is, else on a tiny checkpoint against the
trtllm-serve double); TensorRT vs torch through the experts where TensorRT is importable. Steps that would overrun the budget are skipped
and say so. ``--dry-run``: CPU, tiny shapes, autocast bf16, the ``eager`` compile backend, ONNX Runtime standing in
for TensorRT (no engine build): every line of the run in a few tens of seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "run_check", "Budget"]

ROOT = Path(__file__).resolve().parents[2]
# Seconds each optional step is expected to need on an H100 at production sizes; a step starts only if it fits.
STEP_ESTIMATES_S = {"cuda_graph": 10, "compile": 90, "vlm_compile": 150, "backends_VISTA3D": 60, "backends_BRATS": 60,
                    "backends_CXR": 30}


class Budget:
    """A deadline; ``allow(step)`` says why a step is skipped (None: run it)."""

    def __init__(self, seconds: float, estimates: dict[str, float]) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.estimates = estimates

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allow(self, step: str) -> str | None:
        need = self.estimates.get(step, 0)
        if self.left() < need:
            return f"skipped: {self.left():.0f} s left of the {self.seconds:.0f} s budget, this step needs about {need} s"
        return None


def _environment(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
            "cuda": torch.version.cuda or "none"}
    if device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, sm{properties.major}{properties.minor}"
    info["tensorrt"] = _tensorrt_version() or "not installed"
    return info


def _tensorrt_version() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        return None


def gpu_marker_tests(timeout_s: float) -> dict:
    """``pytest -m gpu`` over the test files that carry the marker (the rest of the suite needs peers this machine
    may not have)."""
    files = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py")
                   if "mark.gpu" in path.read_text(errors="replace"))
    if not files:
        return {"skipped": "no test in tests/ carries the gpu marker", "files": []}
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"files": files, "error": f"did not finish within {timeout_s:.0f} s"}
    lines = (result.stdout + result.stderr).strip().splitlines()
    return {"files": files, "exit_status": result.returncode, "outcome": lines[-1] if lines else "",
            "output_tail": "\n".join(lines[-40:])}


def _section(summary: dict, name: str, run, out_dir: Path) -> None:
    """Run one part; its result (or error) goes into ``summary``, which is written at once: a run stopped later
    (the shell script's hard time limit) still leaves everything measured so far."""
    from bench.gpu.report import write_summary

    started = time.monotonic()
    try:
        summary[name] = run()
    except Exception as exc:  # one part's failure must not hide the others' results
        first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
        summary.setdefault("errors", {})[name] = f"{exc.__class__.__name__}: {first_line}"
    summary.setdefault("section_seconds", {})[name] = time.monotonic() - started
    summary["elapsed_s"] = time.monotonic() - summary["_started"]
    write_summary({k: v for k, v in summary.items() if not k.startswith("_")}, out_dir)
    print(f"[gpu-check] {name}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


def run_check(out_dir: Path, dry_run: bool, budget_s: float, run_tests: bool = True) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    import transformers

    from bench.gpu.networks import expert_networks
    from bench.gpu.parity import network_parity
    from bench.gpu.report import write_summary
    from bench.gpu.speed import network_speed
    from bench.gpu.vlm_backends import vlm_backend_check
    from bench.gpu.vlm_shaped import vlm_check
    from bench.gpu.wheels import missing_distributions

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    budget = Budget(budget_s, {} if dry_run else STEP_ESTIMATES_S)
    has_cuda = torch.cuda.is_available()
    if not dry_run and not has_cuda:
        raise SystemExit("no CUDA device is visible to torch: run on the GPU machine, or use --dry-run")
    device = "cuda" if (has_cuda and not dry_run) else "cpu"
    amp = torch.float16 if device == "cuda" else torch.bfloat16
    compile_backend = "inductor" if device == "cuda" else "eager"
    repeats, warmup = (5, 1) if device == "cuda" else (1, 0)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    summary: dict = {"dry_run": dry_run, "budget_s": budget_s, "environment": _environment(device),
                     "missing_packages": missing_distributions(), "_started": time.monotonic() - budget.elapsed()}

    def section(name: str, run) -> None:
        _section(summary, name, run, out_dir)

    if run_tests:
        section("gpu_tests", lambda: gpu_marker_tests(min(120.0, max(10.0, budget.left() * 0.2))))
    networks = expert_networks(tiny=dry_run)
    section("parity", lambda: [network_parity(spec, device, amp, warmup=bool(warmup)) for spec in networks])
    section("speed", lambda: [network_speed(spec, device, amp, repeats, None, budget.allow, warmup=warmup)
                              for spec in networks])
    section("vlm", lambda: vlm_check(dry_run, device, 8 if dry_run else 64, 1 if dry_run else 3, compile_backend,
                                     budget.allow))
    section("vlm_backends", lambda: vlm_backend_check(device, timeout_s=max(60.0, min(420.0, budget.left()))))
    # The dry run compiles one small network: the code path is the same for all of them.
    to_compile = networks[1:2] if dry_run else networks
    section("compiled_speed", lambda: [network_speed(spec, device, amp, repeats, compile_backend, budget.allow,
                                                     cuda_graphs=False, eager=False, warmup=warmup)
                                       for spec in to_compile])
    _merge_compiled(summary)
    if dry_run or (_tensorrt_version() and has_cuda):
        section("backends", lambda: _backend_agreement(out_dir, dry_run, budget))
    else:
        summary["backends"] = {"skipped": "TensorRT is not installed here: engines were not built"}
    summary["elapsed_s"] = budget.elapsed()
    del summary["_started"]
    write_summary(summary, out_dir)
    return summary


def _merge_compiled(summary: dict) -> None:
    """The compiled variants (measured after the VLM, being the slowest to prepare) join their network's speed row."""
    compiled = {row["network"]: row for row in summary.pop("compiled_speed", [])}
    for row in summary.get("speed", []):
        extra = compiled.get(row["network"], {})
        row.update({key: value for key, value in extra.items() if key.startswith("compile")})
        if extra.get("compiled_ms") and row.get("eager_ms"):
            row["compile_speedup"] = row["eager_ms"] / extra["compiled_ms"]


def _backend_agreement(out_dir: Path, dry_run: bool, budget: Budget) -> dict:
    from bench.gpu.backend_agreement import build_engines, compare_backends, write_models

    out_dir.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="m3edge-gpu-check-", dir=out_dir))
    models_dir = home / "models"
    started = time.monotonic()
    write_models(models_dir, tiny=dry_run)
    result: dict = {"models_written_s": time.monotonic() - started,
                    "candidate": "onnxruntime (dry run: stands in for tensorrt)" if dry_run else "tensorrt"}
    if not dry_run:
        result["engine_build"] = build_engines(home)
        if result["engine_build"]["exit_status"] != 0:
            return result
    result["rows"] = compare_backends(home, models_dir, "onnxruntime" if dry_run else "tensorrt", dry_run, budget.allow)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: the whole run in a few tens of seconds")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench" / "out" / "gpu_check"),
                        help="where gpu_check.json and gpu_check.md go (default: $OUT, else bench/out/gpu_check)")
    parser.add_argument("--budget-s", type=float, default=390.0, help="time for everything (default 390 s)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the gpu marker tests")
    args = parser.parse_args(argv)
    from bench.gpu.wheels import missing_distributions

    missing = missing_distributions()
    if missing:
        raise SystemExit(f"missing Python packages: {', '.join(missing)}. Pack them where there is a package index with "
                         "`bench/gpu_check.sh --pack-wheels bench/out/wheelhouse <this python version>` and run "
                         "`bench/gpu_check.sh --wheelhouse bench/out/wheelhouse` here")
    summary = run_check(args.out, args.dry_run, args.budget_s, run_tests=not args.skip_tests)
    print(f"[gpu-check] wrote {args.out / 'gpu_check.json'} and gpu_check.md in {summary['elapsed_s']:.0f} s"
          f"{'; errors in ' + ', '.join(summary['errors']) if summary.get('errors') else ''}", file=sys.stderr)
    print((args.out / "gpu_check.md").read_text())
