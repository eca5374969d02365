"""Predictor backends: torch vs ONNX Runtime parity, shape checks, backend selection and fallback, and the
TensorRT bookkeeping against the recording stand-in (tests/support/tensorrt_standin, not TensorRT)."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from engines.backends import (
    BackendUnavailable,
    EngineCache,
    NetworkArtifacts,
    Precision,
    ShapeNotAccepted,
    ShapeProfile,
    TensorSpec,
    open_predictor,
)
from engines.backends.onnxruntime import OnnxRuntimePredictor
from engines.backends.tensorrt import TensorRTRuntime, build_tensorrt_engine, load_tensorrt_predictor
from engines.backends.torch import TorchPredictor
from engines.onnx_export import export_onnx
from tests.support.tensorrt_standin import install_standin


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 4, 3, padding=1)
        self.head = torch.nn.Conv3d(4, 1, 1)

    def forward(self, image: torch.Tensor):
        features = torch.relu(self.conv(image))
        return features, self.head(features)


INPUTS = (TensorSpec("image", (None, 2, None, None, None)),)
OUTPUTS = (TensorSpec("features", (None, 4, None, None, None)), TensorSpec("mask", (None, 1, None, None, None)))
PROFILES = (
    ShapeProfile({"image": ((1, 2, 8, 8, 8), (1, 2, 8, 8, 8), (2, 2, 8, 8, 8))}),
    ShapeProfile({"image": ((1, 2, 16, 16, 16), (1, 2, 16, 16, 16), (4, 2, 16, 16, 16))}),
)


@pytest.fixture(scope="module")
def network(tmp_path_factory) -> NetworkArtifacts:
    torch.manual_seed(3)
    module = _TwoHeads().eval()
    onnx_path = tmp_path_factory.mktemp("onnx") / "two_heads.onnx"
    spatial = {0: "batch", 2: "x", 3: "y", 4: "z"}
    export_onnx(module, [torch.rand(1, 2, 8, 8, 8)], onnx_path, ["image"], ["features", "mask"],
                {"image": spatial, "features": spatial, "mask": spatial})  # fmt: skip
    return NetworkArtifacts("test.two_heads", INPUTS, OUTPUTS, onnx_path, lambda: module, PROFILES)


@pytest.mark.parametrize("shape", [(1, 2, 8, 8, 8), (3, 2, 12, 16, 10)])
def test_onnxruntime_matches_torch_on_dynamic_batch_and_spatial_axes(network, shape):
    torch_predictor = TorchPredictor(network.torch_module(), INPUTS, OUTPUTS)
    ort_predictor = OnnxRuntimePredictor(network.onnx_path)
    image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = torch_predictor({"image": image})
    actual = ort_predictor({"image": image})
    assert set(actual) == {"features", "mask"}
    for name in ("features", "mask"):
        assert actual[name].shape == expected[name].shape
        assert torch.allclose(actual[name], expected[name], atol=1e-4), name


def test_onnxruntime_reads_names_and_dynamic_axes_from_the_graph(network):
    predictor = OnnxRuntimePredictor(network.onnx_path)
    assert predictor.inputs[0].name == "image"
    assert predictor.inputs[0].shape == (None, 2, None, None, None)
    assert predictor.output_names == ("features", "mask")
    assert predictor.label == "onnxruntime-cpu"


def test_wrong_channel_count_is_refused_naming_the_input(network):
    predictor = TorchPredictor(network.torch_module(), INPUTS, OUTPUTS)
    with pytest.raises(ShapeNotAccepted, match=r"input 'image' has shape \(1, 3, 8, 8, 8\)"):
        predictor({"image": np.zeros((1, 3, 8, 8, 8), np.float32)})


def test_released_predictor_says_so(network):
    predictor = OnnxRuntimePredictor(network.onnx_path)
    predictor.release()
    with pytest.raises(RuntimeError, match="released"):
        predictor({"image": np.zeros((1, 2, 8, 8, 8), np.float32)})


def test_auto_on_a_cpu_host_uses_onnxruntime_without_a_fallback(network):
    choice = open_predictor(network, "auto", cuda_available=lambda: False)
    assert choice.backend == "onnxruntime-cpu"
    assert choice.fallback_reason == ""


def test_requested_tensorrt_on_a_host_without_gpu_falls_back_to_torch_with_a_warning(network, caplog):
    with caplog.at_level(logging.WARNING, logger="engines.backends.selection"):
        choice = open_predictor(network, "tensorrt", cuda_available=lambda: False)
    assert choice.backend == "torch-cpu"
    assert choice.fallback_reason == "tensorrt unavailable for test.two_heads: no CUDA GPU is visible"
    assert any("falling back to torch" in record.getMessage() for record in caplog.records)


def test_a_missing_tensorrt_package_is_named_with_the_supported_versions(monkeypatch):
    from engines.backends.tensorrt import import_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, even where it is installed
    with pytest.raises(BackendUnavailable, match=r"needs the tensorrt package \(major version 10 or 11\)"):
        import_tensorrt()


def test_requested_onnxruntime_without_an_onnx_file_falls_back_to_torch(network, tmp_path):
    missing = NetworkArtifacts("test.missing", INPUTS, OUTPUTS, tmp_path / "absent.onnx", network.torch_module, PROFILES)
    choice = open_predictor(missing, "onnxruntime", cuda_available=lambda: False)
    assert choice.backend == "torch-cpu"
    assert "absent.onnx is missing" in choice.fallback_reason


def test_no_backend_at_all_raises_with_every_reason(tmp_path):
    nothing = NetworkArtifacts("test.nothing", INPUTS, OUTPUTS, tmp_path / "absent.onnx", None, PROFILES)
    with pytest.raises(BackendUnavailable, match="onnxruntime unavailable.*torch unavailable"):
        open_predictor(nothing, "onnxruntime", cuda_available=lambda: False)


def test_importing_every_backend_module_does_not_import_tensorrt():
    code = (
        "import sys, engines.backends, engines.backends.tensorrt, engines.experts, engines.model_store;"
        "print('tensorrt' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# -- TensorRT bookkeeping, against the recording stand-in ------------------------------------------------------------


def _runtime(module) -> TensorRTRuntime:
    return TensorRTRuntime(trt=module, compute_capability="9.0")


def test_tensorrt_10_sets_the_fp16_builder_flag_and_one_profile_per_shape_range(network, tmp_path, monkeypatch):
    standin = install_standin(monkeypatch, "10.9.0")
    key, built = build_tensorrt_engine(network, EngineCache(tmp_path), Precision.FP16, _runtime(standin))
    assert built
    assert ("Builder.create_network", (0,)) in standin.calls
    assert ("BuilderConfig.set_flag", ("FP16",)) in standin.calls
    shapes = [args for name, args in standin.calls if name == "OptimizationProfile.set_shape"]
    assert shapes == [("image", (1, 2, 8, 8, 8), (1, 2, 8, 8, 8), (2, 2, 8, 8, 8)),
                      ("image", (1, 2, 16, 16, 16), (1, 2, 16, 16, 16), (4, 2, 16, 16, 16))]  # fmt: skip
    assert key.tensorrt_version == "10.9.0" and key.compute_capability == "9.0"


def test_tensorrt_11_builds_strongly_typed_from_the_graph_precision(network, tmp_path, monkeypatch):
    standin = install_standin(monkeypatch, "11.0.0")
    build_tensorrt_engine(network, EngineCache(tmp_path), Precision.FP32, _runtime(standin))
    strongly_typed = 1 << int(standin.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert ("Builder.create_network", (strongly_typed,)) in standin.calls
    assert not [call for call in standin.calls if call[0] == "BuilderConfig.set_flag"]


def test_tensorrt_11_fp16_needs_an_fp16_onnx_export(network, tmp_path, monkeypatch):
    standin = install_standin(monkeypatch, "11.0.0")
    with pytest.raises(BackendUnavailable, match="no fp16 ONNX export of test.two_heads"):
        build_tensorrt_engine(network, EngineCache(tmp_path), Precision.FP16, _runtime(standin))


def test_tensorrt_11_bf16_exports_a_bf16_graph_first_and_builds_from_it(network, tmp_path, monkeypatch):
    import onnx

    standin = install_standin(monkeypatch, "11.0.0")
    typed_path = tmp_path / "two_heads.bf16.onnx"
    typed = dataclasses.replace(network, torch_module=lambda: _TwoHeads().eval(), onnx_by_precision={Precision.BF16: typed_path})
    key, built = build_tensorrt_engine(typed, EngineCache(tmp_path / "engines"), Precision.BF16, _runtime(standin))
    graph = onnx.load(typed_path)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    assert built and key.precision is Precision.BF16
    assert not [call for call in standin.calls if call[0] == "BuilderConfig.set_flag"]
    parsed = [args[0] for name, args in standin.calls if name == "OnnxParser.parse"]
    assert parsed == [typed_path.stat().st_size]


def test_unsupported_tensorrt_version_is_refused(monkeypatch):
    from engines.backends.tensorrt import import_tensorrt

    install_standin(monkeypatch, "8.6.1")
    with pytest.raises(BackendUnavailable, match="tensorrt 8.6.1 is not supported; m3edge supports TensorRT 10 and 11"):
        import_tensorrt()


def test_loading_never_builds_a_missing_engine(network, tmp_path, monkeypatch):
    standin = install_standin(monkeypatch, "10.9.0")
    with pytest.raises(BackendUnavailable, match="run `m3edge engines build`"):
        load_tensorrt_predictor(network, EngineCache(tmp_path), Precision.FP16, _runtime(standin))
    assert not [call for call in standin.calls if call[0].startswith("Builder")]


def test_the_profile_that_fits_the_input_is_selected(network, tmp_path, monkeypatch):
    standin = install_standin(monkeypatch, "10.9.0")
    cache = EngineCache(tmp_path)
    build_tensorrt_engine(network, cache, Precision.FP16, _runtime(standin))
    predictor = load_tensorrt_predictor(network, cache, Precision.FP16, _runtime(standin))
    predictor.device = "cpu"  # the stand-in runs nothing: only the bookkeeping is exercised
    predictor({"image": torch.zeros(3, 2, 16, 16, 16)})
    predictor({"image": torch.zeros(1, 2, 8, 8, 8)})
    selected = [args[0] for name, args in standin.calls if name == "ExecutionContext.set_optimization_profile_async"]
    assert selected == [1, 0]
    with pytest.raises(ShapeNotAccepted, match="fit none of the engine's profiles"):
        predictor({"image": torch.zeros(1, 2, 32, 32, 32)})


def test_auto_with_a_gpu_and_a_built_engine_chooses_tensorrt(network, tmp_path, monkeypatch):
    standin = install_standin(monkeypatch, "10.9.0")
    cache = EngineCache(tmp_path)
    build_tensorrt_engine(network, cache, Precision.FP16, _runtime(standin))
    choice = open_predictor(network, "auto", engine_cache=cache, cuda_available=lambda: True,
                            tensorrt_runtime=lambda: _runtime(standin))  # fmt: skip
    assert choice.backend == "tensorrt"
    assert choice.fallback_reason == ""


def test_auto_with_a_gpu_but_no_engine_falls_back_and_records_why(network, tmp_path, monkeypatch, caplog):
    standin = install_standin(monkeypatch, "10.9.0")
    with caplog.at_level(logging.WARNING, logger="engines.backends.selection"):
        choice = open_predictor(network, "auto", engine_cache=EngineCache(tmp_path), cuda_available=lambda: True,
                                tensorrt_runtime=lambda: _runtime(standin))  # fmt: skip
    # torch on CUDA is tried next; this CPU-only test machine then lands on onnxruntime, every reason recorded.
    assert "no usable TensorRT engine for test.two_heads" in choice.fallback_reason
    assert choice.backend in ("torch-cuda", "onnxruntime-cpu")
    assert any("no usable TensorRT engine" in record.getMessage() for record in caplog.records)


def test_torch_autocast_runs_in_the_requested_precision_and_returns_float32(network):
    full = TorchPredictor(network.torch_module(), INPUTS, OUTPUTS)
    reduced = TorchPredictor(network.torch_module(), INPUTS, OUTPUTS, precision="bf16")
    image = torch.rand(1, 2, 8, 8, 8)
    expected, actual = full({"image": image})["mask"], reduced({"image": image})["mask"]
    assert reduced.precision is Precision.BF16 and actual.dtype == torch.float32
    assert not torch.equal(actual, expected) and torch.allclose(actual, expected, atol=0.1)
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        TorchPredictor(network.torch_module(), INPUTS, OUTPUTS, precision="fp16")


@pytest.fixture
def restored_threads():
    from engines.backends import threads

    before_torch, before_limit = torch.get_num_threads(), threads.cpu_thread_limit()
    yield threads
    threads.limit_cpu_threads(before_limit)
    torch.set_num_threads(before_torch)


def test_a_cpu_thread_limit_reaches_torch_and_new_onnxruntime_sessions(network, restored_threads):
    unlimited = OnnxRuntimePredictor(network.onnx_path)
    restored_threads.limit_cpu_threads(1)
    assert torch.get_num_threads() == 1 and restored_threads.cpu_thread_limit() == 1
    limited = OnnxRuntimePredictor(network.onnx_path)
    assert limited._session.get_session_options().intra_op_num_threads == 1
    assert unlimited._session.get_session_options().intra_op_num_threads == 0  # made before: the runtime's default
    chosen = OnnxRuntimePredictor(network.onnx_path, intra_op_threads=2)  # an explicit count wins
    assert chosen._session.get_session_options().intra_op_num_threads == 2
    image = np.zeros((1, 2, 8, 8, 8), np.float32)
    np.testing.assert_allclose(limited({"image": image})["mask"], unlimited({"image": image})["mask"], rtol=1e-5)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="thread count"):
            restored_threads.limit_cpu_threads(bad)
