#!/usr/bin/env bash
# GPU validation of m3edge on a machine with PyTorch + CUDA, no TensorRT and no internet; under 8 minutes.
#
# What it runs (python -m bench.gpu; every part's result or error lands in gpu_check.json + gpu_check.md):
#   1. the suite's `gpu` marker tests (pytest -m gpu over the files that carry the marker)
#   2. CUDA (autocast fp16) vs CPU (fp32) parity of each expert network, random weights: VISTA3D (vista3d132, 128^3,
#      label prompts), the BraTS SegResNet (1,2,2,4 / 16 filters, 4x240x240x160), the CXR DenseNet-121 (224^2) and
#      ResNet-50 (512^2): largest differences, Dice per label, classification agreement
#   3. expert speed per window: eager, CUDA graph replay, torch.compile (compile time apart)
#   4. the VILA-M3-8B-shaped model (Llama-3-8B + SigLIP so400m-patch14-384 dims, random weights, bf16, batch 1):
#      weights and peak memory, time to first token, tokens/s, eager and torch.compile
#   5. `m3edge vlm check`: with M3EDGE_VLM_BACKEND=openai and M3EDGE_VLM_URL set (a trtllm-serve deployment, real
#      weights), the command itself; otherwise the same comparison on a tiny VILA checkpoint, in-process on this device
#      against the trtllm-serve test double on the CPU (greedy tokens, first-token log-probabilities, verdict)
#   6. where TensorRT is importable (a real deployment): `m3edge engines build`, then each expert with tensorrt vs
#      torch: inference time, Dice per label (VISTA3D, BraTS), classification agreement (CXR)
# A time budget (default 390 s) skips the costly optional steps (compiles) that would not fit, and says so; the
# run is also cut at 440 s (plus about 30 s to install a wheelhouse), and the summary written after every part
# survives that.
#
# Usage:
#   bench/gpu_check.sh [--out DIR] [--budget-s S] [--skip-tests] [--wheelhouse DIR]   the real run (needs CUDA)
#   bench/gpu_check.sh --dry-run [--out DIR]     everything on the CPU with tiny shapes (CI runs this)
#   bench/gpu_check.sh --pack-wheels DIR [PY...] download the wheels a bare PyTorch machine lacks (here, online)
# Output: $OUT (the device runner's folder) when set, else bench/out/gpu_check/.
#
# Wheels a CUDA PyTorch machine typically lacks (it has torch, numpy, jinja2, sympy, networkx, filelock, fsspec,
# typing-extensions): monai, transformers, tokenizers, safetensors, sentencepiece, huggingface-hub (+ hf-xet, httpx2,
# httpcore2, anyio, h11, idna, click, typer, rich, pydantic, ...), httpx, pillow, regex, pyyaml, tqdm, packaging, pytest
# (+ pluggy, iniconfig, pygments, pytest-timeout) and what the suite's conftest imports (pydicom, sqlalchemy, alembic,
# mako). `python -m bench.gpu.wheels list` prints the exact pinned set (the versions this checkout runs with); pack
# them for the machine's CPython version (about 49 MiB; 3.11 and 3.12 together, 68 MiB, are over the 64 MiB a lent
# machine takes; 3.10 is out, m3edge needs 3.11+), e.g. for 3.12:
#   bench/gpu_check.sh --pack-wheels bench/out/wheelhouse 3.12
# and install them there (no index, into bench/out/site, put on PYTHONPATH) with --wheelhouse bench/out/wheelhouse.
#
# On a lent GPU machine (the `run` tool: the working tree is copied, bench/out/ is git-ignored so carry it):
#   run(command="bash bench/gpu_check.sh --wheelhouse bench/out/wheelhouse", carry=["bench/out/wheelhouse"],
#       timeout_s=540)
# then read $OUT/gpu_check.md (the JSON beside it has every number).
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-}"
if [ -z "${python}" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi

if [ "${1:-}" = "--pack-wheels" ]; then
  shift
  exec "${python}" -m bench.gpu.wheels pack "${1:-bench/out/wheelhouse}" "${@:2}"
fi

args=()
wheelhouse=""
dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse) wheelhouse="$2"; shift 2 ;;
    --dry-run) dry_run=1; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done

export PYTHONPATH="$(pwd)${PYTHONPATH:+:${PYTHONPATH}}"
if [ -n "${wheelhouse}" ]; then
  site="$(pwd)/bench/out/site"
  mkdir -p "${site}"
  # Only the wheels matching this interpreter install; torch and numpy stay the machine's own.
  "${python}" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "${site}" \
    --find-links "${wheelhouse}" $("${python}" - "${wheelhouse}" <<'PY'
import pathlib, sys
names = sorted({p.name.split("-")[0].replace("_", "-") for p in pathlib.Path(sys.argv[1]).glob("*.whl")})
print(" ".join(names))
PY
)
  export PYTHONPATH="${PYTHONPATH}:${site}"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
if [ "${dry_run}" -eq 1 ]; then
  exec "${python}" -m bench.gpu "${args[@]}"
fi
exec timeout --signal=TERM --kill-after=10 440 "${python}" -m bench.gpu "${args[@]}"
