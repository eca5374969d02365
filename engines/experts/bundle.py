"""Reading a MONAI bundle directory (``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt``).

Only what the experts need is read: the version, the network definition (built with MONAI's own config parser
from ``network_def`` and the plain values it references, never the bundle's ``imports`` or scripts), the sliding
window and preprocessing parameters, and the weights. The demo writers put the same keys in the same places, so
one loader builds the real ``vista3d132`` from the real bundle and the tiny network from the demo bundle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

__all__ = ["MonaiBundle", "BundleError"]

_ALLOWED_EXPRESSION_PREFIXES = ("$monai.networks.nets.",)


class BundleError(ValueError):
    """A bundle directory is incomplete or not in the expected layout; the message names the file."""


@dataclass(frozen=True)
class MonaiBundle:
    root: Path

    @cached_property
    def metadata(self) -> dict[str, Any]:
        return self._read_json("configs/metadata.json")

    @cached_property
    def inference(self) -> dict[str, Any]:
        return self._read_json("configs/inference.json")

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "unknown"))

    @property
    def is_demo(self) -> bool:
        """Demo bundles (random weights) carry ``"m3edge": {"demo": true}`` in their metadata."""
        return bool(self.metadata.get("m3edge", {}).get("demo", False))

    @property
    def weights_path(self) -> Path:
        return self.root / "models" / "model.pt"

    def onnx_path(self, part: str) -> Path:
        """Where m3edge keeps the ONNX export of one network part (``model`` for the whole network)."""
        return self.root / "models" / f"{part}.onnx"

    def value(self, *path: str, default: Any = None) -> Any:
        """A plain value from inference.json, e.g. ``value("inferer", "roi_size")``."""
        node: Any = self.inference
        for key in path:
            if not isinstance(node, dict) or key not in node:
                if default is not None:
                    return default
                raise BundleError(f"{self.root / 'configs/inference.json'} has no {'/'.join(path)}")
            node = node[key]
        return node

    def build_network(self) -> Any:
        """Instantiate ``network_def`` with MONAI's config parser (the bundle's imports and scripts are not run)."""
        from monai.bundle import ConfigParser

        definition = self.value("network_def")
        if isinstance(definition, str) and not definition.startswith(_ALLOWED_EXPRESSION_PREFIXES):
            raise BundleError(f"network_def {definition!r} is not a monai.networks.nets constructor; refusing to evaluate it")
        plain = {
            key: value
            for key, value in self.inference.items()
            if key not in ("imports", "network_def") and isinstance(value, (int, float, bool, list)) and not _has_expression(value)
        }
        parser = ConfigParser({**plain, "network_def": definition})
        return parser.get_parsed_content("network_def", instantiate=True)

    def load_network(self, device: str = "cpu") -> Any:
        """The network with the bundle's weights, in eval mode."""
        import torch

        if not self.weights_path.is_file():
            raise BundleError(f"{self.weights_path} is missing; run `m3edge models demo` or `m3edge models import`")
        network = self.build_network()
        checkpoint = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
            checkpoint = checkpoint["model"]
        network.load_state_dict(checkpoint)
        return network.to(device).eval()

    def _read_json(self, relative: str) -> dict[str, Any]:
        path = self.root / relative
        if not path.is_file():
            raise BundleError(f"{path} is missing: {self.root} is not a MONAI bundle (run `m3edge models demo` or import one)")
        return json.loads(path.read_text(encoding="utf-8"))


def _has_expression(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith(("$", "@", "%"))
    if isinstance(value, list):
        return any(_has_expression(item) for item in value)
    return False
