"""From a synthetic DICOM series, through dicom_node.volumes (H4's reader), into the experts: a block drawn at a
known place in patient space comes back at the same place (VISTA3D with a deterministic network), for slices
stored in order and reversed; a MONOCHROME1 radiograph runs through the CXR ensemble."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dicom_node.volumes import frontal_radiograph, volume_from_series
from engines.experts.base import ExpertInput
from engines.experts.vista3d import Vista3DExpert
from engines.model_store.demo import write_vista3d_demo
from tests.support.synthetic_series import axial_geometry, ct_series, cxr_dataset, sagittal_geometry, sample_ras

HALF = 8.0


@pytest.fixture(scope="module")
def vista3d(tmp_path_factory):
    bundle = write_vista3d_demo(tmp_path_factory.mktemp("models") / "vista3d", encoder_embed_dim=8, patch_size=(64, 64, 64))
    return Vista3DExpert(bundle, backend="onnxruntime")


class _FollowsTheInput(torch.nn.Module):
    def forward(self, image: torch.Tensor, class_vector: torch.Tensor, transpose: bool = False, **_: object):
        bright = (image[:, :1] > 0.75).float() * 2.0 - 1.0
        logits = torch.cat([bright] + [-torch.ones_like(bright)] * (class_vector.shape[0] - 1), dim=1)
        return logits if transpose else logits.transpose(0, 1)


@pytest.mark.parametrize(
    ("geometry", "reverse"),
    [(axial_geometry(44, 48, 20), False), (axial_geometry(44, 48, 20), True), (sagittal_geometry(40, 44, 36), False)],
    ids=["axial", "axial-reversed", "sagittal"],
)
def test_a_block_in_a_ct_series_is_labelled_at_the_same_place_in_patient_space(vista3d, geometry, reverse, monkeypatch):
    monkeypatch.setattr(vista3d, "network", _FollowsTheInput())
    centre_voxel = (np.asarray(geometry.shape) - 1) / 2
    centre = geometry.ras_affine[:3, :3] @ centre_voxel + geometry.ras_affine[:3, 3] + np.array([2.0, -3.0, 4.0])

    def hounsfield(points: np.ndarray) -> np.ndarray:
        offset = np.abs(points - centre)
        return np.where(np.all(offset <= HALF, -1), 900.0, np.where(np.all(offset <= 14.0, -1), 30.0, -1000.0))

    series = ct_series(sample_ras(geometry, hounsfield), geometry, reverse_order=reverse)
    volume = volume_from_series(series)
    result = vista3d.run(ExpertInput(volume.array, volume.affine), "hepatic tumor")
    assert result.label_volume.shape == volume.array.shape
    assert np.array_equal(result.affine, volume.affine)
    labelled = np.argwhere(result.label_volume == 1)
    assert len(labelled) > 0
    ras = labelled @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    assert np.linalg.norm(ras.mean(axis=0) - centre) < 1.5
    spacing = np.linalg.norm(volume.affine[:3, :3], axis=0).max()
    assert np.all(np.abs(ras - centre) <= HALF + spacing)


def test_a_monochrome1_radiograph_runs_through_the_cxr_ensemble(tmp_path):
    from engines.experts.cxr import CxrExpert
    from engines.experts.labels import CXR_MODEL_PATHOLOGIES, CXR_MODEL_RESOLUTION
    from engines.model_store.cxr_ensemble import write_cxr_ensemble
    from engines.model_store.demo import tiny_cxr_network

    torch.manual_seed(0)
    name = "densenet121-res224-all"
    folder = write_cxr_ensemble(tmp_path / "cxr", {name: tiny_cxr_network(name)}, resolutions=CXR_MODEL_RESOLUTION,
                                pathologies=CXR_MODEL_PATHOLOGIES, groups={}, version="t", demo=True)  # fmt: skip
    stored = np.tile(np.linspace(0, 4095, 300), (260, 1)).astype(np.uint16)
    radiograph = frontal_radiograph([cxr_dataset(stored, photometric="MONOCHROME1")])
    assert radiograph.image.dtype == np.uint8
    result = CxrExpert(folder, backend="onnxruntime").run(ExpertInput(radiograph.image))
    assert len(result.scores) == 18 and result.demo is True
