"""Every CUDA path, on a machine that has one (``bench/gpu_check.sh`` runs these with ``pytest -m gpu``; they skip here):
each expert on CUDA against the same demo model on the CPU, the in-process VILA-M3 on CUDA against the CPU with the
tiny demo checkpoint, and TensorRT engines against torch on CUDA where TensorRT is importable.

Demo models have random weights, so outputs are compared with each other, never with an expected answer. fp32 on both
sides: the comparison is of the device, not of the precision (fp16 on random weights flips near-ties)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not importable")

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def _ct(shape=(72, 64, 48)) -> np.ndarray:
    rng = np.random.default_rng(3)
    volume = rng.normal(40, 20, size=shape).astype(np.float32)
    volume[20:50, 16:48, 10:38] += 900  # something bone-bright to segment
    return volume


def _brain(shape=(40, 36, 28)) -> np.ndarray:
    rng = np.random.default_rng(7)
    volume = np.zeros((4, *shape), np.float32)
    volume[:, 4:-4, 4:-4, 3:-3] = rng.uniform(100, 300, size=(4, shape[0] - 8, shape[1] - 8, shape[2] - 6))
    return volume


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from engines.model_store.demo import write_brats_demo, write_cxr_demo, write_vista3d_demo

    root = tmp_path_factory.mktemp("models")
    return {
        "VISTA3D": write_vista3d_demo(root / "vista3d", encoder_embed_dim=8, patch_size=(64, 64, 64)),
        "BRATS": write_brats_demo(root / "brats_mri_segmentation", init_filters=8, roi_size=(32, 32, 32)),
        "CXR": write_cxr_demo(root / "cxr"),
    }


def _expert(name: str, folder, backend: str, **options):
    from engines.experts.brats import BratsExpert
    from engines.experts.cxr import CxrExpert
    from engines.experts.vista3d import Vista3DExpert

    expert_class = {"VISTA3D": Vista3DExpert, "BRATS": BratsExpert, "CXR": CxrExpert}[name]
    return expert_class(folder, backend=backend, precision="fp32", **options)


def _inputs(name: str):
    from engines.experts.base import ExpertInput

    if name == "CXR":
        return ExpertInput(np.random.default_rng(11).integers(0, 256, size=(300, 260), dtype=np.uint8))
    return ExpertInput(_brain() if name == "BRATS" else _ct(), AFFINE)


def _agree(first, second) -> None:
    if first.label_volume is not None:
        assert first.label_volume.shape == second.label_volume.shape
        assert (first.label_volume == second.label_volume).mean() > 0.99
        assert np.array_equal(first.affine, second.affine)
    else:
        assert first.scores.keys() == second.scores.keys() and first.scores
        assert max(abs(first.scores[k] - second.scores[k]) for k in first.scores) < 1e-3


@pytest.mark.parametrize("name", ["VISTA3D", "BRATS", "CXR"])
def test_each_expert_on_cuda_agrees_with_the_cpu(models, name):
    on_cuda = _expert(name, models[name], "torch")
    on_cpu = _expert(name, models[name], "onnxruntime")
    cuda_result, cpu_result = on_cuda.run(_inputs(name)), on_cpu.run(_inputs(name))
    assert "cuda" in cuda_result.backend and "cpu" in cpu_result.backend, (cuda_result.backend, cpu_result.backend)
    assert cuda_result.fallback_reason == ""
    _agree(cuda_result, cpu_result)
    on_cuda.release()


def test_the_in_process_vlm_on_cuda_answers_as_on_the_cpu(tmp_path):
    from engines.vlm.base import Conversation, GenerationConfig
    from engines.vlm.demo import write_demo_checkpoint
    from engines.vlm.model import VilaM3

    directory = write_demo_checkpoint(tmp_path / "vila-m3-demo", "llama_3")
    image = (np.random.default_rng(5).random((300, 240, 3)) * 255).astype(np.uint8)
    conversation = Conversation("llama_3").add("user", "<image> This is a CT image.\nWhat organs are visible?", (image,))
    config = GenerationConfig(max_new_tokens=8, min_new_tokens=8)
    on_cuda = VilaM3(directory, template="llama_3", device="cuda", dtype="float32")
    on_cpu = VilaM3(directory, template="llama_3", device="cpu", dtype="float32")
    assert "cuda" in on_cuda.backend_name and "cpu" in on_cpu.backend_name
    cuda_logits = on_cuda.prompt_logits(conversation).float().cpu()
    cpu_logits = on_cpu.prompt_logits(conversation).float()
    assert torch.allclose(cuda_logits, cpu_logits, atol=1e-3, rtol=1e-3)
    assert on_cuda.run(conversation, config).output_ids == on_cpu.run(conversation, config).output_ids


@needs_tensorrt
@pytest.mark.parametrize("name", ["VISTA3D", "BRATS", "CXR"])
def test_each_expert_on_a_tensorrt_engine_agrees_with_torch_on_cuda(models, name, tmp_path):
    from engines.backends import EngineCache

    cache = EngineCache(tmp_path / "engines")
    on_tensorrt = _expert(name, models[name], "tensorrt", engine_cache=cache)
    on_torch = _expert(name, models[name], "torch")
    trt_result, torch_result = on_tensorrt.run(_inputs(name)), on_torch.run(_inputs(name))
    assert trt_result.backend.startswith("tensorrt") and trt_result.fallback_reason == "", trt_result.fallback_reason
    assert any((tmp_path / "engines").rglob("*")), "no engine was written to the cache"
    _agree(trt_result, torch_result)
    # a second load takes the cached engine
    assert _expert(name, models[name], "tensorrt", engine_cache=cache).run(_inputs(name)).backend == trt_result.backend
