"""Export a network (or one part of it) to ONNX once, with dynamic batch and spatial axes where it allows.

The same file serves ONNX Runtime (the CPU path) and TensorRT (engines are built from it). The export uses the
TorchScript-based exporter (``dynamo=False``): it needs no ``onnxscript`` and handles MONAI's 3D networks; the
exported graph is then checked with ``onnx.checker`` and written atomically.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from dicom_node.private_files import write_bytes_atomically

__all__ = ["export_onnx", "export_typed_onnx", "OPSET"]

OPSET = 17


def export_onnx(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> Path:
    """Write ``module`` as ONNX to ``path``. ``dynamic_axes``: per tensor name, axis index -> symbolic name."""
    import onnx

    module = module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices and tracer warnings
        torch.onnx.export(
            module,
            tuple(example_inputs),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={name: dict(axes) for name, axes in (dynamic_axes or {}).items()},
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    return write_bytes_atomically(path, buffer.getvalue())


def export_typed_onnx(network, precision) -> Path:
    """Export ``network`` (a ``NetworkArtifacts`` with a torch form) with its weights and inputs cast to ``precision``.

    TensorRT 11 builds strongly typed networks: an fp16/bf16 engine needs an fp16/bf16 graph. Every ``None`` axis of
    the declared inputs/outputs stays dynamic; the example input is the first profile's ``opt`` shape.
    """
    from engines.backends.base import BackendUnavailable, Precision

    precision = Precision(precision)
    path = network.onnx_for(precision)
    if precision is Precision.FP32 or path is None:
        raise ValueError(f"{network.name}: no typed ONNX path for {precision.value}")
    if network.torch_module is None or not network.profiles:
        raise BackendUnavailable(f"{network.name}: a {precision.value} ONNX export needs the torch form and a profile")
    dtype = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}[precision]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        module = network.torch_module().to(device=device, dtype=dtype)
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        raise BackendUnavailable(f"{network.name}: cannot cast the torch form to {precision.value}: {exc}") from exc
    profile = network.profiles[0]
    examples = [torch.rand(profile.shapes[spec.name][1], dtype=dtype, device=device) for spec in network.inputs]
    axes = {
        spec.name: {axis: f"{spec.name}_{axis}" for axis, size in enumerate(spec.shape) if size is None}
        for spec in (*network.inputs, *network.outputs)
    }
    return export_onnx(module, examples, path, [s.name for s in network.inputs], [s.name for s in network.outputs], axes)
