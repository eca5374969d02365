"""``m3edge vlm check`` where this machine can run it.

- A deployment (``M3EDGE_VLM_BACKEND=openai`` with ``M3EDGE_VLM_URL`` and the real checkpoint in the environment): the
  command itself, as an operator runs it, against the configured trtllm-serve; its JSON report is kept.
- Otherwise (a bare GPU machine, or the dry run): the same comparison on a tiny random VILA checkpoint, the in-process
  model on this device against tests/support/openai_double.py serving the checkpoint on the CPU the way trtllm-serve
  serves VILA (a TEST DOUBLE: no TensorRT-LLM here). On CUDA that is also CUDA-vs-CPU agreement of the VILA code path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["vlm_backend_check"]

ROOT = Path(__file__).resolve().parents[2]


def vlm_backend_check(device: str, timeout_s: float = 420.0) -> dict:
    if os.environ.get("M3EDGE_VLM_BACKEND") == "openai" and os.environ.get("M3EDGE_VLM_URL"):
        return _configured_deployment(timeout_s)
    return _demo_against_the_double(device)


def _configured_deployment(timeout_s: float) -> dict:
    command = [sys.executable, "-c", "from service.cli.main import main; main()", "vlm", "check", "--json"]
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"mode": "configured deployment", "error": f"m3edge vlm check did not finish within {timeout_s:.0f} s"}
    summary = {"mode": "configured deployment (m3edge vlm check)", "exit_status": result.returncode,
               "stderr_tail": result.stderr[-1500:]}
    try:
        summary["report"] = json.loads(result.stdout)
    except json.JSONDecodeError:
        summary["stdout_tail"] = result.stdout[-1500:]
    return summary


def _demo_against_the_double(device: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from engines.vlm.backend_check import check_cases, compare_backends
    from engines.vlm.demo import write_demo_checkpoint
    from engines.vlm.model import VilaM3
    from engines.vlm.openai_backend import OpenAIVisionLanguageModel
    from tests.support.openai_double import OpenAIServerDouble
    from tests.support.trtllm_emulation import TrtllmVilaEmulation

    with tempfile.TemporaryDirectory(prefix="m3edge-vlm-check-") as folder:
        checkpoint = write_demo_checkpoint(Path(folder) / "vila1.5-8b-demo", "llama_3")
        reference = VilaM3(checkpoint, template="llama_3", device=device, dtype="float32")
        served = VilaM3(checkpoint, template="llama_3", device="cpu", dtype="float32")
        with OpenAIServerDouble(model_id="vila1.5-8b-demo", serving=TrtllmVilaEmulation(served)) as server:
            candidate = OpenAIVisionLanguageModel(server.url, template="llama_3")
            report = compare_backends(reference, candidate, check_cases("llama_3"), max_new_tokens=8, tolerance=1e-3)
    return {"mode": f"demo checkpoint: in-process on {device} vs the trtllm-serve double on cpu (no M3EDGE_VLM_URL "
                    "deployment configured here)", "report": report.to_dict()}
