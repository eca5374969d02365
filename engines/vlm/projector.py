"""VILA's ``mlp_downsample`` projector: merge 2x2 blocks of vision tokens, then LayerNorm -> Linear -> GELU -> Linear.

The vision tower gives a square grid of S x S tokens (27 x 27 for SigLIP so400m at 384 px). The grid is padded with zeros to
an even size (28 x 28: one row at the bottom, one column at the right), each 2x2 block becomes one token whose channels are
``[x(2i, 2j), x(2i, 2j+1), x(2i+1, 2j), x(2i+1, 2j+1)]`` (4 C channels), giving 14 x 14 = 196 tokens.

Token order: VILA 355fda9 (the code VILA-M3 was trained with) emits the merged tokens column by column, block (row i, col j)
at position ``j * 14 + i``. Later VILA (NVILA) and TensorRT-LLM's ``modeling_vila.py`` add a final ``permute(0, 2, 1, 3)``
and emit them row by row (``i * 14 + j``): the same tokens, transposed. ``TokenOrder`` selects which one.

Parameter names match VILA's ``MultimodalProjector`` (``layers.1`` LayerNorm, ``layers.2`` and ``layers.4`` Linear), so the
``mm_projector/`` weights of a published checkpoint load as they are.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path

import torch
from torch import nn

__all__ = ["TokenOrder", "merge_2x2_blocks", "DownsampleMerge", "MlpDownsampleProjector", "PROJECTOR_TYPE"]

PROJECTOR_TYPE = "mlp_downsample"
_WEIGHTS_FILE = "model.safetensors"


class TokenOrder(str, enum.Enum):
    VILA_355FDA9 = "vila-355fda9"  # column-major blocks, no final permute: what VILA-M3 was trained with
    ROW_MAJOR = "row-major"  # with the final permute (NVILA, TensorRT-LLM modeling_vila)


def merge_2x2_blocks(features: torch.Tensor, order: TokenOrder | str = TokenOrder.VILA_355FDA9) -> torch.Tensor:
    """(N, S*S, C) square-grid tokens -> (N, ceil(S/2)**2, 4C) merged tokens in the chosen order."""
    order = TokenOrder(order)
    if features.dim() != 3:
        raise ValueError(f"features must be (batch, tokens, channels), got shape {tuple(features.shape)}")
    batch, tokens, channels = features.shape
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise ValueError(f"{tokens} vision tokens do not form a square grid; mlp_downsample needs S x S tokens")
    grid = features.reshape(batch, side, side, channels)
    if side % 2:
        grid = torch.cat([grid, grid.new_zeros(batch, 1, side, channels)], dim=1)
        grid = torch.cat([grid, grid.new_zeros(batch, side + 1, 1, channels)], dim=2)
        side += 1
    half = side // 2
    # (N, row-block i, row-in-block a, col-block j, col-in-block b, C) -> channels ordered (a, b, C)
    blocks = grid.reshape(batch, half, 2, half, 2, channels)
    if order is TokenOrder.VILA_355FDA9:
        merged = blocks.permute(0, 3, 1, 2, 4, 5)  # (N, j, i, a, b, C): column-major over blocks
    else:
        merged = blocks.permute(0, 1, 3, 2, 4, 5)  # (N, i, j, a, b, C): row-major over blocks
    return merged.reshape(batch, half * half, 4 * channels)


class DownsampleMerge(nn.Module):
    """The parameter-free first stage (``layers.0`` in VILA)."""

    def __init__(self, order: TokenOrder | str = TokenOrder.VILA_355FDA9) -> None:
        super().__init__()
        self.order = TokenOrder(order)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return merge_2x2_blocks(features, self.order)


class MlpDownsampleProjector(nn.Module):
    """Vision features (N, S*S, mm_hidden) -> LLM input embeddings (N, ceil(S/2)**2, hidden)."""

    def __init__(self, mm_hidden_size: int, hidden_size: int, order: TokenOrder | str = TokenOrder.VILA_355FDA9) -> None:
        super().__init__()
        if mm_hidden_size <= 0 or hidden_size <= 0:
            raise ValueError(f"projector sizes must be positive, got mm_hidden_size={mm_hidden_size}, hidden_size={hidden_size}")
        self.mm_hidden_size = mm_hidden_size
        self.hidden_size = hidden_size
        self.layers = nn.Sequential(
            DownsampleMerge(order),
            nn.LayerNorm(mm_hidden_size * 4),
            nn.Linear(mm_hidden_size * 4, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, hidden_size),
        )

    @property
    def order(self) -> TokenOrder:
        return self.layers[0].order

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)

    @classmethod
    def from_pretrained(
        cls, directory: Path, mm_hidden_size: int, hidden_size: int, order: TokenOrder | str = TokenOrder.VILA_355FDA9
    ) -> MlpDownsampleProjector:
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} is missing: mm_projector/ must hold VILA's projector config.json")
        config = json.loads(config_path.read_text())
        kind = config.get("mm_projector_type")
        if kind != PROJECTOR_TYPE:
            raise ValueError(f"{config_path}: mm_projector_type is {kind!r}; only {PROJECTOR_TYPE!r} (VILA1.5 / VILA-M3) is supported")
        projector = cls(mm_hidden_size, hidden_size, order)
        state = _read_state_dict(directory)
        try:
            missing, unexpected = projector.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatch
            raise ValueError(
                f"{directory}: projector weights do not match mlp_downsample(mm_hidden={mm_hidden_size}, hidden={hidden_size}): {error}"
            ) from error
        if missing or unexpected:
            raise ValueError(
                f"{directory}: projector weights do not match mlp_downsample(mm_hidden={mm_hidden_size}, hidden={hidden_size}): "
                f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
            )
        return projector

    def save_pretrained(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "architectures": ["MultimodalProjector"],
            "model_type": "v2l_projector",
            "mm_projector_type": PROJECTOR_TYPE,
            "torch_dtype": str(next(self.parameters()).dtype).removeprefix("torch."),
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        save_file(state, str(directory / _WEIGHTS_FILE), metadata={"format": "pt"})


def _read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if files:
        state: dict[str, torch.Tensor] = {}
        for path in files:
            state.update(load_file(str(path)))
        return state
    legacy = directory / "pytorch_model.bin"
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory} has no *.safetensors or pytorch_model.bin projector weights")
