#!/usr/bin/env bash
# Start trtllm-serve for VILA-M3 inside NVIDIA's TensorRT-LLM container (deploy/compose.yaml's `trtllm` service).
#   serve.sh CHECKPOINT_DIR [trtllm-serve options...]
# 1. CHECKPOINT_DIR's full path must contain the template key (e.g. /models/vila1.5-8b-m3 -> llama_3; README, step 1).
# 2. The installed TensorRT-LLM's VILA path is patched for its four known defects (patch_vila_355fda9.py: projector
#    token order, "\n" after images, tensor images, placeholders counted twice before PR #12827), then each behaviour
#    is checked by importing the package. If the files are not in a form the patch knows, or a defect is still there,
#    the server does not start and says why (exit status 70).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
checkpoint="${1:?usage: serve.sh CHECKPOINT_DIR [trtllm-serve options...]}"
shift
case "$(echo "${checkpoint}" | tr '[:upper:]' '[:lower:]')" in
  *vila1.5-3b*|*vila1.5-8b*|*vila1.5-13b*|*vila1.5-40b*|*llama-3*|*llama3*) ;;
  *) echo "serve.sh: ${checkpoint} names no VILA template key (vila1.5-8b, vila1.5-3b, ...): trtllm-serve would pick the tokenizer's template" >&2
     exit 64 ;;
esac
if ! version="$("${python}" "${here}/patch_vila_355fda9.py" --version)"; then
  echo "serve.sh: TensorRT-LLM is not installed here: run this in NVIDIA's TensorRT-LLM container" >&2
  exit 69
fi
echo "serve.sh: TensorRT-LLM ${version}"
refuse() {
  echo "serve.sh: TensorRT-LLM ${version}: $1; not starting trtllm-serve." >&2
  echo "serve.sh: use the in-process backend (M3EDGE_VLM_BACKEND=vila) or a TensorRT-LLM release the patch knows (README, \"VILA-M3 with TensorRT-LLM\")." >&2
  exit 70
}
"${python}" "${here}/patch_vila_355fda9.py" \
  || refuse "its VILA files are not in a form deploy/trtllm/patch_vila_355fda9.py knows, so its known defects cannot be ruled out"
"${python}" "${here}/patch_vila_355fda9.py" --check \
  || refuse "a known defect of its VILA path is still present (above)"
exec trtllm-serve "${checkpoint}" "$@"
