"""Export a network (or one part of it) to ONNX once, with dynamic batch and spatial axes where it allows.

The same file serves ONNX Runtime (the CPU path) and TensorRT (engines are built from it). The export uses the
TorchScript-based exporter (``dynamo=False``): it needs no ``onnxscript`` and handles MONAI's 3D networks; the
exported graph is then checked with ``onnx.checker`` and written atomically.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

__all__ = ["export_onnx", "OPSET"]

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, path)
    return path
