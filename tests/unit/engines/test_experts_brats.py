"""BraTS expert on a tiny demo bundle: backend parity, the bundle's label convention, and geometry with a
deterministic network (the label volume comes back on the input grid, blocks where they were drawn)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engines.backends import TensorSpec
from engines.backends.torch import TorchPredictor
from engines.experts.base import ExpertInput, ExpertName
from engines.experts.brats import BratsExpert, brats_labels_from_probabilities
from engines.experts.labels import BRATS_INPUT_ORDER
from engines.model_store.demo import write_brats_demo


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return write_brats_demo(tmp_path_factory.mktemp("models") / "brats_mri_segmentation", init_filters=8, roi_size=(32, 32, 32))


@pytest.fixture(scope="module")
def experts(bundle_dir):
    return {backend: BratsExpert(bundle_dir, backend=backend) for backend in ("torch", "onnxruntime")}


def _brain(shape=(40, 36, 28)) -> np.ndarray:
    rng = np.random.default_rng(7)
    volume = np.zeros((4, *shape), np.float32)
    volume[:, 4:-4, 4:-4, 3:-3] = rng.uniform(100, 300, size=(4, shape[0] - 8, shape[1] - 8, shape[2] - 6))
    return volume


def test_onnxruntime_matches_torch_within_1e_4(experts):
    image = torch.randn(1, 4, 32, 32, 32)
    expected = experts["torch"].choice.predictor({"image": image})["logits"]
    actual = experts["onnxruntime"].choice.predictor({"image": image})["logits"]
    assert actual.shape == (1, 3, 32, 32, 32)
    assert torch.allclose(actual, expected, atol=1e-4)


def test_both_backends_run_the_whole_pipeline_and_record_what_ran(experts):
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-90.0, -120.0, -70.0)
    volume = _brain()
    results = {backend: expert.run(ExpertInput(volume, affine)) for backend, expert in experts.items()}
    assert (results["torch"].label_volume == results["onnxruntime"].label_volume).mean() > 0.99
    for backend, result in results.items():
        assert result.expert is ExpertName.BRATS
        assert result.backend == f"{backend}-cpu"
        assert result.model_version == "brats_mri_segmentation 0.5.2-demo"
        assert result.demo is True
        assert result.label_volume.shape == volume.shape[1:]
        assert np.array_equal(result.affine, affine)
        assert set(np.unique(result.label_volume)) <= {0, 1, 2, 4}
        assert set(result.volumes_ml) == {"TC", "WT", "ET"}
        assert result.volumes_ml["WT"] >= result.volumes_ml["TC"] >= result.volumes_ml["ET"]


def test_labels_follow_the_bundle_convention():
    # voxels:            ET only, TC only, WT only, TC+WT, all three, none
    tc = np.array([0.1, 0.9, 0.2, 0.8, 0.9, 0.1])
    wt = np.array([0.1, 0.2, 0.9, 0.8, 0.9, 0.4])
    et = np.array([0.9, 0.1, 0.1, 0.2, 0.7, 0.5])
    labels = brats_labels_from_probabilities(np.stack([tc, wt, et]))
    assert labels.tolist() == [4, 1, 2, 1, 4, 0]


def test_input_order_is_the_bundles():
    assert BRATS_INPUT_ORDER == ("T1c", "T1", "T2", "FLAIR")


class _ThresholdsSequences(torch.nn.Module):
    """Deterministic stand-in for the SegResNet: TC from T1 (ch 1), WT from FLAIR (ch 3), ET from T1c (ch 0)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image[:, [1, 3, 0]] > 1.0).float() * 20.0 - 10.0


def test_blocks_drawn_in_the_sequences_come_back_as_labels_in_place(experts, monkeypatch):
    expert = experts["onnxruntime"]
    deterministic = TorchPredictor(_ThresholdsSequences(), (TensorSpec("image", (None, 4, None, None, None)),),
                                   (TensorSpec("logits", (None, 3, None, None, None)),))  # fmt: skip
    monkeypatch.setattr(expert, "choice", dataclasses.replace(expert.choice, predictor=deterministic))
    volume = np.zeros((4, 44, 40, 36), np.float32)
    volume[:, 2:-2, 2:-2, 2:-2] = 100.0  # brain
    volume[3, 10:30, 8:28, 6:26] = 400.0  # FLAIR: whole tumour
    volume[1, 14:26, 12:24, 10:22] = 400.0  # T1: tumour core
    volume[0, 17:23, 15:21, 13:19] = 400.0  # T1c: enhancing
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    result = expert.run(ExpertInput(volume, affine))
    expected = np.zeros(volume.shape[1:], np.uint8)
    expected[10:30, 8:28, 6:26] = 2
    expected[14:26, 12:24, 10:22] = 1
    expected[17:23, 15:21, 13:19] = 4
    assert np.array_equal(result.label_volume, expected)
    assert result.volumes_ml == pytest.approx({"ET": 6**3 / 1000, "TC": 12**3 / 1000, "WT": 20**3 / 1000})
    assert result.label_names == {1: "tumor core", 2: "edema", 4: "enhancing tumor"}


def test_a_three_channel_input_is_refused(experts):
    with pytest.raises(ValueError, match=r"\(4, X, Y, Z\) in the order T1c, T1, T2, FLAIR"):
        experts["torch"].run(ExpertInput(np.zeros((3, 8, 8, 8), np.float32), np.eye(4)))
