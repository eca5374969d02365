"""A STAND-IN for the ``tensorrt`` module, for CPU tests of m3edge's TensorRT bookkeeping. It is not TensorRT.

It builds nothing and runs nothing: "engines" are small byte strings describing the build, and every call our
backend makes is appended to ``module.calls`` as ``(name, args)`` so tests can check cache keying, profile
selection, precision handling per TensorRT generation, rebuilds of bad engines and fallbacks. Tests inject it
with ``install_standin(monkeypatch, version)``; real engines are built by the GPU check of a later issue.
"""

from __future__ import annotations

import enum
import json
import types

__all__ = ["make_standin", "install_standin", "STANDIN_MAGIC"]

STANDIN_MAGIC = b"M3EDGE-TENSORRT-STANDIN-ENGINE\n"


def make_standin(version: str = "10.9.0") -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.__doc__ = "m3edge test stand-in for tensorrt (records calls; not TensorRT)"
    module.STANDIN = True
    calls: list[tuple[str, tuple]] = []
    module.calls = calls

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity: str = "WARNING") -> None:
            self.severity = severity

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 5

    class BuilderFlag(enum.Enum):
        FP16 = "FP16"
        BF16 = "BF16"

    class MemoryPoolType(enum.Enum):
        WORKSPACE = "WORKSPACE"

    class DataType(enum.Enum):
        FLOAT = "FLOAT"
        HALF = "HALF"

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.num_errors = 0

        def parse(self, data: bytes) -> bool:
            calls.append(("OnnxParser.parse", (len(data),)))
            if not data.startswith(b"\x08"):  # an ONNX ModelProto starts with field 1 (ir_version), varint
                self.num_errors = 1
                return False
            return True

        def get_error(self, index: int) -> str:
            return "stand-in parser: not an ONNX model"

    class OptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, list[list[int]]] = {}

        def set_shape(self, name: str, low, opt, high) -> None:
            calls.append(("OptimizationProfile.set_shape", (name, tuple(low), tuple(opt), tuple(high))))
            self.shapes[name] = [list(low), list(opt), list(high)]

    class BuilderConfig:
        def __init__(self) -> None:
            self.flags: list[str] = []
            self.profiles: list[OptimizationProfile] = []

        def set_memory_pool_limit(self, pool, size: int) -> None:
            calls.append(("BuilderConfig.set_memory_pool_limit", (pool.value, size)))

        def set_flag(self, flag) -> None:
            calls.append(("BuilderConfig.set_flag", (flag.value,)))
            self.flags.append(flag.value)

        def add_optimization_profile(self, profile: OptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger: Logger) -> None:
            calls.append(("Builder", ()))

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("Builder.create_network", (flags,)))
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
            calls.append(("Builder.build_serialized_network", (network.flags, tuple(config.flags))))
            description = {"flags": config.flags, "profiles": [p.shapes for p in config.profiles]}
            return STANDIN_MAGIC + json.dumps(description).encode()

    class ExecutionContext:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}

        def set_optimization_profile_async(self, index: int, stream: int) -> bool:
            calls.append(("ExecutionContext.set_optimization_profile_async", (index,)))
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            calls.append(("ExecutionContext.set_input_shape", (name, tuple(shape))))
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name: str, address: int) -> bool:
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            # The stand-in's "network" has outputs shaped like its first input.
            return next(iter(self.shapes.values()))

        def execute_async_v3(self, stream: int) -> bool:
            calls.append(("ExecutionContext.execute_async_v3", ()))
            return True

    class Engine:
        def __init__(self, description: dict) -> None:
            self.description = description

        def create_execution_context(self) -> ExecutionContext:
            return ExecutionContext(self)

        def get_tensor_dtype(self, name: str) -> DataType:
            return DataType.FLOAT

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes):
            calls.append(("Runtime.deserialize_cuda_engine", (len(data),)))
            if not data.startswith(STANDIN_MAGIC):
                return None
            return Engine(json.loads(data[len(STANDIN_MAGIC) :]))

    for value in (
        Logger, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType, DataType, OnnxParser, Builder, Runtime,
    ):  # fmt: skip
        setattr(module, value.__name__, value)
    return module


def install_standin(monkeypatch, version: str = "10.9.0") -> types.ModuleType:
    """Put a fresh stand-in at ``sys.modules['tensorrt']`` for one test (monkeypatch undoes it)."""
    import sys

    module = make_standin(version)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module
