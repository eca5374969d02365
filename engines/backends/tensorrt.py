"""TensorRT backend: build engines from ONNX ahead of time, run them from the engine cache.

``tensorrt`` is imported here only, lazily, inside ``import_tensorrt()``: importing this module never needs it.
Two generations are supported, chosen by the imported module's major version:

- TensorRT 10: the network is weakly typed; fp16/bf16 are builder flags (``BuilderFlag.FP16``/``BF16``) applied
  to the fp32 ONNX graph.
- TensorRT 11: networks are strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) and the precision
  is the one carried by the ONNX graph, so an fp16 engine is built from an fp16 ONNX export.

Workers only ``load_tensorrt_predictor`` (a missing or bad engine raises ``BackendUnavailable`` so the caller
falls back); only ``build_tensorrt_engine`` (``m3edge engines build``) builds.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engines.backends.artifacts import NetworkArtifacts
from engines.backends.base import BackendUnavailable, Precision, Predictor, ShapeNotAccepted, ShapeProfile, TensorSpec
from engines.backends.engine_cache import EngineCache, EngineKey

__all__ = [
    "SUPPORTED_MAJOR_VERSIONS",
    "TensorRTRuntime",
    "TensorRTPredictor",
    "import_tensorrt",
    "build_engine_bytes",
    "build_tensorrt_engine",
    "load_tensorrt_predictor",
]

logger = logging.getLogger(__name__)

SUPPORTED_MAJOR_VERSIONS = (10, 11)
_WORKSPACE_BYTES = 4 << 30
_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64"}


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or ``BackendUnavailable`` naming what is missing and the versions supported."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise BackendUnavailable(
            f"the tensorrt backend needs the tensorrt package (major version 10 or 11): {exc}; "
            "install it with `pip install 'm3edge[tensorrt]'` on a GPU host"
        ) from exc
    major = _major_version(trt)
    if major not in SUPPORTED_MAJOR_VERSIONS:
        raise BackendUnavailable(f"tensorrt {trt.__version__} is not supported; m3edge supports TensorRT 10 and 11")
    return trt


def _major_version(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return -1


@dataclass(frozen=True)
class TensorRTRuntime:
    """The imported module, its version, and the GPU it builds for."""

    trt: Any
    compute_capability: str

    @property
    def version(self) -> str:
        return str(self.trt.__version__)

    @property
    def major(self) -> int:
        return _major_version(self.trt)

    @classmethod
    def detect(cls) -> TensorRTRuntime:
        import torch

        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendUnavailable("the tensorrt backend needs a CUDA GPU, and torch sees none")
        major, minor = torch.cuda.get_device_capability()
        return cls(trt=trt, compute_capability=f"{major}.{minor}")

    def logger(self) -> Any:
        return self.trt.Logger(self.trt.Logger.WARNING)

    def deserialize(self, engine_bytes: bytes) -> Any:
        runtime = self.trt.Runtime(self.logger())
        engine = runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            raise RuntimeError("deserialize_cuda_engine returned None")
        return engine


def build_engine_bytes(
    runtime: TensorRTRuntime, onnx_bytes: bytes, profiles: Sequence[ShapeProfile], precision: Precision
) -> bytes:
    """Parse the ONNX graph and build a serialised engine with one optimisation profile per ``profiles`` entry."""
    trt = runtime.trt
    log = runtime.logger()
    builder = trt.Builder(log)
    if runtime.major >= 11:
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    else:
        network = builder.create_network(0)
    parser = trt.OnnxParser(network, log)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
    if runtime.major < 11:
        if precision is Precision.FP16:
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision is Precision.BF16:
            config.set_flag(trt.BuilderFlag.BF16)
    for profile in profiles:
        optimisation_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes.items():
            optimisation_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(optimisation_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine; see the TensorRT log above")
    return bytes(serialized)


def _engine_key(network: NetworkArtifacts, runtime: TensorRTRuntime, precision: Precision) -> EngineKey:
    onnx_path = _onnx_for_engine(network, runtime, precision)
    return EngineKey.create(network.name, onnx_path, runtime.version, runtime.compute_capability, precision, network.profiles)


def _onnx_for_engine(network: NetworkArtifacts, runtime: TensorRTRuntime, precision: Precision):
    # TensorRT 11 is strongly typed: the precision must already be in the graph.
    onnx_path = network.onnx_for(precision) if runtime.major >= 11 else network.onnx_path
    if onnx_path is None or not onnx_path.is_file():
        raise BackendUnavailable(
            f"no {precision.value if runtime.major >= 11 else 'fp32'} ONNX export of {network.name}; "
            "run `m3edge models demo` or `m3edge models import`, then `m3edge engines build`"
        )
    return onnx_path


def build_tensorrt_engine(
    network: NetworkArtifacts, cache: EngineCache, precision: Precision | str, runtime: TensorRTRuntime
) -> tuple[EngineKey, bool]:
    """Build (or keep) the engine of one network. Returns its key and whether it was (re)built.

    With TensorRT 11 and a reduced precision, the typed ONNX graph is exported first when it is missing.
    """
    precision = Precision(precision)
    if not network.profiles:
        raise ValueError(f"{network.name} declares no TensorRT profiles")
    typed = network.onnx_for(precision)
    if runtime.major >= 11 and precision is not Precision.FP32 and typed is not None and not typed.is_file():
        from engines.onnx_export import export_typed_onnx

        logger.info("TensorRT %s is strongly typed: exporting %s in %s", runtime.version, network.name, precision.value)
        export_typed_onnx(network, precision)
    key = _engine_key(network, runtime, precision)
    onnx_bytes = _onnx_for_engine(network, runtime, precision).read_bytes()
    _engine, built = cache.ensure(
        key, lambda: build_engine_bytes(runtime, onnx_bytes, network.profiles, precision), runtime.deserialize
    )
    return key, built


def load_tensorrt_predictor(
    network: NetworkArtifacts, cache: EngineCache, precision: Precision | str, runtime: TensorRTRuntime | None = None
) -> TensorRTPredictor:
    """The predictor over an engine built ahead of time; ``BackendUnavailable`` when there is none (never builds)."""
    precision = Precision(precision)
    runtime = runtime or TensorRTRuntime.detect()
    key = _engine_key(network, runtime, precision)
    engine = cache.load(key, runtime.deserialize)
    if engine is None:
        raise BackendUnavailable(
            f"no usable TensorRT engine for {network.name} ({precision.value}, TensorRT {runtime.version}, "
            f"compute capability {runtime.compute_capability}); run `m3edge engines build`"
        )
    return TensorRTPredictor(runtime, engine, network, precision)


class TensorRTPredictor(Predictor):
    """Runs a deserialised engine; picks the first optimisation profile that accepts the input shapes."""

    backend = "tensorrt"

    def __init__(
        self, runtime: TensorRTRuntime, engine: Any, network: NetworkArtifacts, precision: Precision, device: str = "cuda"
    ) -> None:
        self.runtime = runtime
        self.device = device
        self.precision = precision
        self.inputs = tuple(TensorSpec(spec.name, tuple(None for _ in spec.shape), spec.dtype) for spec in network.inputs)
        self.outputs = tuple(network.outputs)
        self.profiles = tuple(network.profiles)
        self._engine: Any = engine
        self._context: Any = engine.create_execution_context()
        self._active_profile: int | None = None

    def select_profile(self, shapes: Mapping[str, Sequence[int]]) -> int:
        for index, profile in enumerate(self.profiles):
            if profile.accepts(shapes):
                return index
        raise ShapeNotAccepted(
            f"tensorrt: input shapes {dict(shapes)} fit none of the engine's profiles "
            f"({[profile.describe() for profile in self.profiles]}); rebuild with wider profiles"
        )

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        if self._context is None:
            raise RuntimeError("this TensorRTPredictor was released; load the model again")
        tensors = {spec.name: torch.as_tensor(feeds[spec.name]).to(self.device).contiguous() for spec in self.inputs}
        shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
        profile = self.select_profile(shapes)
        stream = torch.cuda.current_stream().cuda_stream if self.device.startswith("cuda") else 0
        if profile != self._active_profile:
            self._context.set_optimization_profile_async(profile, stream)
            self._active_profile = profile
        for name, tensor in tensors.items():
            tensor = tensor.to(_torch_dtype(self._engine.get_tensor_dtype(name)))
            tensors[name] = tensor
            self._context.set_input_shape(name, tuple(tensor.shape))
            self._context.set_tensor_address(name, tensor.data_ptr())
        results = {}
        for spec in self.outputs:
            shape = tuple(self._context.get_tensor_shape(spec.name))
            dtype = _torch_dtype(self._engine.get_tensor_dtype(spec.name))
            results[spec.name] = torch.empty(shape, dtype=dtype, device=self.device)
            self._context.set_tensor_address(spec.name, results[spec.name].data_ptr())
        if not self._context.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT execution failed for shapes {shapes}")
        if self.device.startswith("cuda"):
            torch.cuda.current_stream().synchronize()
        return {name: value.float() for name, value in results.items()}

    def release(self) -> None:
        self._context = None
        self._engine = None


def _torch_dtype(trt_dtype: Any) -> Any:
    import torch

    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    return getattr(torch, _TORCH_DTYPES.get(name, "float32"))
