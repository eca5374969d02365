"""Brain MRI: the four sequences chosen by SeriesDescription, and resampled onto one 1 mm grid in patient space."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.volumes import (
    BrainMriPatterns,
    BrainMriSequence,
    NotRoutableError,
    SequencePattern,
    brain_mri_volumes,
    select_brain_mri_series,
)
from engines.resample import resample_to_common_grid
from tests.support.synthetic_series import SyntheticStudy, axial_geometry, brain_mri_study, mr_series

BLOCK_CENTRE_RAS = np.array([6.0, -4.0, 2.5])  # symmetric between the 5 mm and 4 mm slices


def _phantom(points: np.ndarray) -> np.ndarray:
    """100 everywhere, 1000 in an 8 mm cube around BLOCK_CENTRE_RAS."""
    inside = np.all(np.abs(points - BLOCK_CENTRE_RAS) <= 4.0, axis=-1)
    return np.where(inside, 1000.0, 100.0)


def _tiny_series(description: str, study: SyntheticStudy, slices: int = 2, series_number: int = 1):
    geometry = axial_geometry(3, 3, slices)
    return mr_series(np.full(geometry.shape, 10.0), geometry, study=study, description=description,
                     series_number=series_number)


def _study(descriptions, study: SyntheticStudy | None = None):
    study = study or SyntheticStudy()
    return [ds for number, text in enumerate(descriptions) for ds in _tiny_series(text, study, series_number=number)]


def _chosen_descriptions(chosen) -> list[str]:
    return [chosen[sequence][0].SeriesDescription for sequence in BrainMriSequence]


def test_scanner_descriptions_are_recognised_and_decoys_ignored() -> None:
    datasets = _study(
        ["AX T2* GRE", "Sag T1 FLAIR", "AX T2 FSE", "DWI b1000", "AX FLAIR", "AX T1 MPRAGE +C", "AX T1 SE"]
    )
    chosen = select_brain_mri_series(datasets)
    assert _chosen_descriptions(chosen) == ["AX T1 MPRAGE +C", "Sag T1 FLAIR", "AX T2 FSE", "AX FLAIR"]


@pytest.mark.parametrize(
    "t1c",
    ["T1 post contrast", "t1_mprage_gd", "T1+C", "T1 CE", "POST GAD T1", "T1W_3D_TFE contrast", "t1_ce"],
)
def test_contrast_enhanced_t1_descriptions(t1c: str) -> None:
    chosen = select_brain_mri_series(_study([t1c, "T1 pre", "T2", "FLAIR"]))
    assert chosen[BrainMriSequence.T1C][0].SeriesDescription == t1c
    assert chosen[BrainMriSequence.T1][0].SeriesDescription == "T1 pre"


def test_a_study_without_flair_is_not_routable() -> None:
    with pytest.raises(NotRoutableError, match=r"not routable: no FLAIR series \(patterns: include 'flair'.*'T2'"):
        select_brain_mri_series(_study(["T1 post contrast", "T1", "T2"]))


def test_sequences_in_another_frame_of_reference_are_not_routable() -> None:
    datasets = _study(["T1 post contrast", "T1", "T2"]) + _study(["FLAIR"])  # FLAIR in a new study/frame
    with pytest.raises(NotRoutableError, match="FLAIR series lie in another frame of reference"):
        select_brain_mri_series(datasets)


def test_several_candidates_prefer_the_series_with_more_images() -> None:
    study = SyntheticStudy()
    datasets = _study(["T1 post contrast", "T1", "FLAIR"], study)
    datasets += _tiny_series("T2 short", study, slices=2, series_number=8)
    datasets += _tiny_series("T2 long", study, slices=4, series_number=9)
    assert select_brain_mri_series(datasets)[BrainMriSequence.T2][0].SeriesDescription == "T2 long"


def test_patterns_are_configurable() -> None:
    patterns = BrainMriPatterns(flair=SequencePattern(r"dark\s*fluid"))
    chosen = select_brain_mri_series(_study(["T1 post contrast", "T1", "T2", "Dark Fluid"]), patterns)
    assert chosen[BrainMriSequence.FLAIR][0].SeriesDescription == "Dark Fluid"
    with pytest.raises(ValueError, match="not a valid regex"):
        SequencePattern("t1(")


def test_four_sequences_on_different_grids_resample_to_one_grid_in_patient_space() -> None:
    series = brain_mri_study(_phantom, extra_series=("localizer", "DWI"))
    datasets = [ds for group in series.values() for ds in group]
    volumes = brain_mri_volumes(datasets)
    assert [volume.series_description for volume in volumes.volumes] == ["T1 post contrast", "T1", "T2", "FLAIR"]
    assert len({volume.array.shape for volume in volumes.volumes}) == 4  # four different grids
    resampled = resample_to_common_grid(volumes.pairs)
    assert resampled.array.shape[0] == 4
    assert np.allclose(resampled.affine[:3, :3], np.eye(3))
    centre_index = np.rint(BLOCK_CENTRE_RAS - resampled.affine[:3, 3]).astype(int)
    far_index = np.rint(np.array([-10.0, 10.0, -10.0]) - resampled.affine[:3, 3]).astype(int)
    for channel in range(4):
        values = resampled.array[channel]
        assert values[tuple(centre_index)] == pytest.approx(1000.0, abs=1.0)
        assert values[tuple(far_index)] == pytest.approx(100.0, abs=1.0)
        bright = np.argwhere(values > 550.0) + resampled.affine[:3, 3]
        assert np.allclose(bright.mean(axis=0), BLOCK_CENTRE_RAS, atol=1.0)
