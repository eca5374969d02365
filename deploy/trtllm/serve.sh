#!/usr/bin/env bash
# Start trtllm-serve for VILA-M3 inside NVIDIA's TensorRT-LLM container (deploy/compose.yaml's `trtllm` service).
#   serve.sh CHECKPOINT_DIR [trtllm-serve options...]
# CHECKPOINT_DIR's full path must contain the template key (e.g. /models/vila1.5-8b-m3 -> llama_3; README, step 1).
# The installed modeling_vila.py is patched to VILA 355fda9's projector order first, and the order checked (step 2):
# if either fails the server does not start.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
checkpoint="${1:?usage: serve.sh CHECKPOINT_DIR [trtllm-serve options...]}"
shift
case "$(echo "${checkpoint}" | tr '[:upper:]' '[:lower:]')" in
  *vila1.5-3b*|*vila1.5-8b*|*vila1.5-13b*|*vila1.5-40b*|*llama-3*|*llama3*) ;;
  *) echo "serve.sh: ${checkpoint} names no VILA template key (vila1.5-8b, vila1.5-3b, ...): trtllm-serve would pick the tokenizer's template" >&2
     exit 64 ;;
esac
python3 "${here}/patch_vila_355fda9.py"
python3 "${here}/patch_vila_355fda9.py" --check
exec trtllm-serve "${checkpoint}" "$@"
