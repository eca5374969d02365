"""``m3edge vlm check`` as an operator runs it (a subprocess, settings from the environment), against
tests/support/openai_double.py serving a tiny VILA checkpoint the way trtllm-serve serves VILA (TEST DOUBLE:
tests/support/trtllm_emulation.py), and compared with the in-process model on the same checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engines.vlm.demo import write_demo_checkpoint
from engines.vlm.model import VilaM3
from tests.support.openai_double import OpenAIServerDouble
from tests.support.trtllm_emulation import ServingDefects, TrtllmVilaEmulation


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_demo_checkpoint(tmp_path_factory.mktemp("vila-check") / "vila1.5-8b-demo", "llama_3", image_size=56,
                                 patch_size=14)


def _check(tmp_path, checkpoint, url: str | None, *arguments: str, backend: str = "openai") -> subprocess.CompletedProcess:
    environment = {**os.environ, "M3EDGE_HOME": str(tmp_path / "home"), "M3EDGE_VLM_BACKEND": backend,
                   "M3EDGE_VLM_MODEL_DIR": str(checkpoint), "M3EDGE_VLM_TEMPLATE": "llama_3"}
    if url:
        environment["M3EDGE_VLM_URL"] = url
    command = [sys.executable, "-c", "from service.cli.main import main; main()", "vlm", "check", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)


@pytest.mark.slow
def test_a_server_answering_as_trained_agrees(tmp_path, checkpoint):
    with OpenAIServerDouble(serving=TrtllmVilaEmulation(VilaM3(checkpoint, template="llama_3"))) as server:
        result = _check(tmp_path, checkpoint, server.url, "--tolerance", "1e-4", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verdict: AGREE" in result.stdout
    for name in ("ct/turn-1", "ct/turn-2", "cxr/turn-1", "cxr/turn-2", "brain-mr/turn-1", "brain-mr/turn-2"):
        assert f"{name}" in result.stdout and result.stdout.count("equal") >= 6
    assert all(request["logprobs"] is True and request["top_logprobs"] == 5 for request in server.chat_requests)


@pytest.mark.slow
def test_a_server_adding_newlines_after_images_disagrees_with_exit_status_1(tmp_path, checkpoint):
    emulation = TrtllmVilaEmulation(VilaM3(checkpoint, template="llama_3"), ServingDefects(newline_after_images=True))
    with OpenAIServerDouble(serving=emulation) as server:
        result = _check(tmp_path, checkpoint, server.url, "--tolerance", "1e-4", "--max-new-tokens", "4", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "disagree" and len(report["cases"]) == 6
    assert report["candidate"].startswith("openai:http://127.0.0.1:")
    assert all(case["first_logprob_difference"] > 1e-4 or not case["tokens_equal"] for case in report["cases"])


@pytest.mark.slow
def test_an_unpatched_server_that_cannot_answer_image_requests_exits_2(tmp_path, checkpoint):
    emulation = TrtllmVilaEmulation(VilaM3(checkpoint, template="llama_3"), ServingDefects(tensor_resize=True))
    with OpenAIServerDouble(serving=emulation) as server:
        result = _check(tmp_path, checkpoint, server.url, "--max-new-tokens", "2")
    assert result.returncode == 2
    assert "no consultation could be compared" in result.stderr and "requested resize" in result.stderr


def test_the_in_process_backend_has_nothing_to_compare_with(tmp_path, checkpoint):
    result = _check(tmp_path, checkpoint, None, backend="vila")
    assert result.returncode == 2 and "nothing to compare" in result.stderr


def test_help_names_the_command():
    result = subprocess.run([sys.executable, "-c", "from service.cli.main import main; main()", "vlm", "check", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--tolerance" in result.stdout and "--max-new-tokens" in result.stdout
