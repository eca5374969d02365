"""VISTA3D expert on a tiny demo bundle (real bundle layout, random weights): backend parity, label prompts,
and geometry (a bright block drawn at a known RAS place comes back at the same place on the input grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.experts.base import ExpertInput, ExpertName
from engines.experts.labels import vista3d_label_prompt
from engines.experts.vista3d import Vista3DExpert, _prompt_labels
from engines.model_store.demo import write_vista3d_demo
from tests.support.synthetic_series import axial_geometry, sagittal_geometry, sample_ras

BLOCK_OFFSET = np.array([3.0, -2.0, 4.0])  # RAS mm from the field of view's centre (not symmetric on purpose)
BLOCK_HALF = 8.0


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return write_vista3d_demo(tmp_path_factory.mktemp("models") / "vista3d", encoder_embed_dim=8, patch_size=(64, 64, 64))


@pytest.fixture(scope="module")
def experts(bundle_dir):
    return {backend: Vista3DExpert(bundle_dir, backend=backend) for backend in ("torch", "onnxruntime")}


def _phantom(geometry) -> tuple[np.ndarray, np.ndarray]:
    """Air, a soft-tissue body box, and a bone-bright block; returns (HU volume, expected block mask)."""
    centre_voxel = (np.asarray(geometry.shape) - 1) / 2
    centre = geometry.ras_affine[:3, :3] @ centre_voxel + geometry.ras_affine[:3, 3] + BLOCK_OFFSET

    def hounsfield(points: np.ndarray) -> np.ndarray:
        offset = np.abs(points - centre)
        body = np.all(offset <= 14.0, axis=-1)
        block = np.all(offset <= BLOCK_HALF, axis=-1)
        return np.where(block, 1000.0, np.where(body, 40.0, -1000.0)).astype(np.float32)

    volume = sample_ras(geometry, hounsfield)
    return volume, volume > 500


class _FollowsTheInput(torch.nn.Module):
    """A deterministic VISTA3D stand-in: prompt 0's logit is positive where the scaled intensity is bone-bright."""

    def forward(self, image: torch.Tensor, class_vector: torch.Tensor, transpose: bool = False, **_: object):
        bright = (image[:, :1] > 0.75).float() * 2.0 - 1.0  # (1, 1, X, Y, Z)
        logits = torch.cat([bright] + [-torch.ones_like(bright)] * (class_vector.shape[0] - 1), dim=1)
        return logits if transpose else logits.transpose(0, 1)


def test_onnxruntime_encoder_matches_torch_within_1e_4(experts):
    image = torch.rand(1, 1, 64, 64, 64)
    expected = experts["torch"].choice.predictor({"image": image})
    actual = experts["onnxruntime"].choice.predictor({"image": image})
    for level in range(5):
        name = f"features_{level}"
        assert torch.allclose(actual[name], expected[name], atol=1e-4), name


def test_whole_network_logits_stay_close_with_the_encoder_on_onnxruntime(experts):
    image = torch.rand(1, 48, 40, 56)
    from monai.data import MetaTensor

    logits = {backend: expert._infer(MetaTensor(image), (1, 26, 3)) for backend, expert in experts.items()}
    assert logits["torch"].shape == (3, 48, 40, 56)
    # The backend runs the encoder (compared at 1e-4 above); the torch decoder and class head after it, with random
    # weights and instance norms, amplify float32 summation-order differences to a few 1e-4 on logits of O(1).
    assert (logits["onnxruntime"] - logits["torch"]).abs().max() < 5e-3


def test_both_backends_give_the_same_labels_and_record_what_ran(experts):
    geometry = axial_geometry(40, 40, 16)
    volume, _ = _phantom(geometry)
    affine = geometry.ras_affine
    results = {backend: expert.run(ExpertInput(volume, affine), "hepatic tumor") for backend, expert in experts.items()}
    torch_result, ort_result = results["torch"], results["onnxruntime"]
    # Random weights put many logits near zero: a difference of 1e-6 may flip a voxel, so compare the labels
    # loosely here and the logits tightly below.
    assert (torch_result.label_volume == ort_result.label_volume).mean() > 0.99
    assert (torch_result.backend, ort_result.backend) == ("torch-cpu", "onnxruntime-cpu")
    for result in results.values():
        assert result.expert is ExpertName.VISTA3D
        assert result.argument == "hepatic tumor"
        assert result.model_version == "vista3d 0.5.4-demo"
        assert result.demo is True
        assert result.fallback_reason == ""
        assert set(result.timings) == {"preprocess", "inference", "postprocess"}
        assert set(np.unique(result.label_volume)) <= {0, 1, 26}
        assert set(result.label_names) == set(np.unique(result.label_volume)) - {0}


@pytest.mark.parametrize(
    "geometry",
    [axial_geometry(48, 48, 20), sagittal_geometry(40, 44, 36)],
    ids=["axial", "sagittal"],
)
def test_a_block_comes_back_at_the_same_place_on_the_input_grid(experts, geometry, monkeypatch):
    expert = experts["onnxruntime"]
    monkeypatch.setattr(expert, "network", _FollowsTheInput())
    volume, expected = _phantom(geometry)
    assert expected.sum() > 100, "the phantom's block must lie inside the field of view"
    result = expert.run(ExpertInput(volume, geometry.ras_affine), "hepatic tumor")
    assert result.label_volume.shape == volume.shape
    assert np.array_equal(result.affine, geometry.ras_affine)
    found = result.label_volume == 1  # prompt 0 of "hepatic tumor" is the liver, id 1
    dice = 2 * (found & expected).sum() / (found.sum() + expected.sum())
    assert dice > 0.85
    ras = lambda mask: (geometry.ras_affine[:3, :3] @ np.argwhere(mask).mean(axis=0)) + geometry.ras_affine[:3, 3]  # noqa: E731
    assert np.linalg.norm(ras(found) - ras(expected)) < 1.5
    voxel_ml = abs(np.linalg.det(geometry.ras_affine[:3, :3])) / 1000
    assert result.volumes_ml["liver"] == pytest.approx(found.sum() * voxel_ml)
    assert result.label_names == {1: "liver"}


def test_prompt_labels_follow_the_bundle_post_transform():
    logits = torch.tensor([[[-1.0, 2.0, 0.5]], [[-2.0, 1.0, 3.0]]])  # 2 prompts, 1 x 3 voxels
    labels = _prompt_labels(logits.unsqueeze(-1), (1, 26))
    assert labels.squeeze(-1).tolist() == [[0.0, 1.0, 26.0]]
    single = _prompt_labels(torch.tensor([[[-0.1, 0.1]]]).unsqueeze(-1), (128,))
    assert single.squeeze(-1).tolist() == [[0.0, 128.0]]


def test_label_prompts_match_the_protocol():
    assert len(vista3d_label_prompt(None)) == 117
    assert vista3d_label_prompt("") == vista3d_label_prompt("everything")
    assert not {2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132} & set(vista3d_label_prompt("everything"))
    assert vista3d_label_prompt("hepatic tumor") == (1, 26)
    assert vista3d_label_prompt("lung tumor")[:6] == (28, 29, 30, 31, 32, 23)  # lung (20) -> its lobes
    assert 2 not in vista3d_label_prompt("organs") and {14, 5} <= set(vista3d_label_prompt("organs"))


def test_an_unknown_argument_names_the_valid_ones(experts):
    with pytest.raises(ValueError, match=r"unknown VISTA3D argument 'kidney stones'; valid arguments: .*hepatic tumor"):
        experts["torch"].run(ExpertInput(np.zeros((8, 8, 8), np.float32), np.eye(4)), "kidney stones")


def test_a_volume_without_affine_is_refused(experts):
    with pytest.raises(ValueError, match="needs the volume's 4x4 affine"):
        experts["torch"].run(ExpertInput(np.zeros((8, 8, 8), np.float32), None), "hepatic tumor")
