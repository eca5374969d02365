"""mlp_downsample: the 2x2 merge and its token order, checked against hand-computed grids; VILA's parameter names."""

from __future__ import annotations

import json

import pytest
import torch

from engines.vlm.projector import MlpDownsampleProjector, TokenOrder, merge_2x2_blocks


def grid(values: list[list[float]]) -> torch.Tensor:
    """A (1, S*S, 1) token sequence from an S x S grid given row by row."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1)


FOUR_BY_FOUR = grid([[0, 1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33]])


def test_355fda9_order_emits_blocks_column_by_column():
    merged = merge_2x2_blocks(FOUR_BY_FOUR, TokenOrder.VILA_355FDA9)
    assert merged[0].tolist() == [
        [0, 1, 10, 11],  # block (row 0, col 0)
        [20, 21, 30, 31],  # block (row 1, col 0)
        [2, 3, 12, 13],  # block (row 0, col 1)
        [22, 23, 32, 33],  # block (row 1, col 1)
    ]


def test_permuted_order_emits_blocks_row_by_row():
    merged = merge_2x2_blocks(FOUR_BY_FOUR, TokenOrder.ROW_MAJOR)
    assert merged[0].tolist() == [[0, 1, 10, 11], [2, 3, 12, 13], [20, 21, 30, 31], [22, 23, 32, 33]]


def test_odd_grid_is_padded_with_zeros_at_the_bottom_and_right():
    odd = grid([[1, 2, 3], [11, 12, 13], [21, 22, 23]])
    merged = merge_2x2_blocks(odd, "vila-355fda9")
    assert merged[0].tolist() == [[1, 2, 11, 12], [21, 22, 0, 0], [3, 0, 13, 0], [23, 0, 0, 0]]


def test_channels_stay_together_within_each_source_token():
    features = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # batch 2, 2x2 grid, 3 channels
    merged = merge_2x2_blocks(features)
    assert merged.shape == (2, 1, 12)
    assert torch.equal(merged[1, 0], features[1].reshape(-1))


def test_siglip_384_grid_becomes_196_tokens():
    merged = merge_2x2_blocks(torch.randn(1, 27 * 27, 8))
    assert merged.shape == (1, 196, 32)


def test_non_square_token_count_is_refused():
    with pytest.raises(ValueError, match="728 vision tokens do not form a square grid"):
        merge_2x2_blocks(torch.randn(1, 728, 4))


def test_parameter_names_match_vilas_multimodal_projector():
    projector = MlpDownsampleProjector(mm_hidden_size=8, hidden_size=16)
    shapes = {name: tuple(t.shape) for name, t in projector.state_dict().items()}
    assert shapes == {
        "layers.1.weight": (32,),
        "layers.1.bias": (32,),
        "layers.2.weight": (16, 32),
        "layers.2.bias": (16,),
        "layers.4.weight": (16, 16),
        "layers.4.bias": (16,),
    }


def test_projector_round_trips_through_mm_projector_directory(tmp_path):
    torch.manual_seed(1)
    projector = MlpDownsampleProjector(8, 16).eval()
    projector.save_pretrained(tmp_path / "mm_projector")
    loaded = MlpDownsampleProjector.from_pretrained(tmp_path / "mm_projector", 8, 16).eval()
    features = torch.randn(2, 25, 8)
    assert json.loads((tmp_path / "mm_projector" / "config.json").read_text())["mm_projector_type"] == "mlp_downsample"
    assert torch.equal(projector(features), loaded(features))
    assert loaded(features).shape == (2, 9, 16)


def test_order_only_permutes_the_output_tokens(tmp_path):
    torch.manual_seed(2)
    projector = MlpDownsampleProjector(4, 6).eval()
    projector.save_pretrained(tmp_path)
    permuted = MlpDownsampleProjector.from_pretrained(tmp_path, 4, 6, TokenOrder.ROW_MAJOR).eval()
    features = torch.randn(1, 16, 4)
    trained = projector(features).reshape(2, 2, 6)  # [block col j, block row i]
    assert torch.allclose(permuted(features).reshape(2, 2, 6), trained.transpose(0, 1))


def test_projector_with_wrong_sizes_is_refused(tmp_path):
    MlpDownsampleProjector(8, 16).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="projector weights do not match mlp_downsample"):
        MlpDownsampleProjector.from_pretrained(tmp_path, 8, 32)


def test_other_projector_types_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"mm_projector_type": "mlp2x_gelu"}))
    with pytest.raises(ValueError, match="only 'mlp_downsample'"):
        MlpDownsampleProjector.from_pretrained(tmp_path, 8, 16)
