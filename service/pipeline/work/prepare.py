"""Stage ``prepare``: the route's series become the arrays its expert takes, saved as ``input.npz`` in the run's folder.

Only the series the route found eligible (``eligible_series``: they passed the rule's series tests and showed its
anatomy) are read.

- VISTA3D (CT): the largest CT series that is one regular volume (localizer images dropped); (X, Y, Z) HU + affine.
- BraTS (brain MRI): the four sequences the routing rule matched (or, failing that, found by ``BrainMriPatterns``),
  in one frame of reference, on the BraTS expert's one 1 mm RAS grid (``ExpertInput.on_common_grid``, protocol
  section 7): (4, X, Y, Z) in the order T1c, T1, T2, FLAIR. The T1c is the source series: the report writes the
  labels against its images (``dicom_node.volumes`` puts them on its grid).
- CXR: the frontal (PA, then AP) radiograph as 8-bit MONOCHROME2.

The result is a ``contracts.PreparedInput``: the ``.npz``, and what the report needs later (the source instances the
results are written against, the other sequences as evidence).
Before an input is saved, the image checks (``image_checks``; by default a blank image is refused) may skip the study.
A study that lacks what the expert needs (no frontal view, no FLAIR, sequences not co-registered) ends ``skipped``:
like a study no rule matched, it is not something this expert can take. A series that should work but does not
(not one regular volume, unreadable pixels) fails the run with the reason, for a person to look at.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset

from dicom_node.volumes import (
    NotRoutableError,
    SeriesVolume,
    VolumeError,
    brain_mri_volumes,
    frontal_radiograph,
    volume_from_series,
)
from service.pipeline.contracts import PreparedInput, Route
from service.pipeline.executor import StageOutcome
from service.pipeline.ledger import StageClaim
from service.pipeline.stages import PermanentStageError, StudySkipped
from service.pipeline.work.image_checks import DEFAULT_IMAGE_CHECKS, ImageCheck
from service.pipeline.work.resources import StageResources, save_arrays

__all__ = ["PrepareStage"]

LOGGER = logging.getLogger(__name__)
BRATS_ORDER = ("T1c", "T1", "T2", "FLAIR")


def _read(paths: Sequence[Path]) -> list[Dataset]:
    datasets = []
    for path in paths:
        dataset = pydicom.dcmread(path)
        dataset.filename = str(path)
        datasets.append(dataset)
    return datasets


def _paths_of(volume: SeriesVolume, datasets: Sequence[Dataset]) -> list[str]:
    dropped = set(volume.dropped_instances)
    return [ds.filename for ds in datasets if str(ds.SOPInstanceUID) not in dropped]


def _eligible(files: dict[str, list[Path]], route: Route) -> dict[str, list[Path]]:
    """The series the routing rule found eligible (its series tests and anatomy), when the route names them (runs
    planned before routes did read every series)."""
    eligible = route.eligible_series
    if eligible is None:
        return files
    kept = {uid: paths for uid, paths in files.items() if uid in set(eligible)}
    if not kept:
        raise NotRoutableError("not routable: none of the series the routing rule accepted is stored any more")
    return kept


class PrepareStage:
    def __init__(self, resources: StageResources, image_checks: Sequence[ImageCheck] = DEFAULT_IMAGE_CHECKS) -> None:
        self.resources = resources
        self.image_checks = tuple(image_checks)

    def _check_image(self, expert: str, image: np.ndarray) -> None:
        """Every image check on the expert's input, before it is saved; the first refusal skips the study."""
        for check in self.image_checks:
            reason = check(expert, image)
            if reason is not None:
                raise NotRoutableError(reason)

    def __call__(self, claim: StageClaim) -> StageOutcome:
        route = Route.of(claim)
        expert = route.expert.value
        target = self.resources.work_dir(claim.study_uid, claim.run_id) / "input.npz"
        try:
            files = _eligible(self.resources.series_files(claim.study_uid), route)
            if expert == "VISTA3D":
                result = self._ct(files, target)
            elif expert == "BRATS":
                result = self._brain_mri(files, route.matched_series, target)
            else:
                result = self._radiograph(files, target)
        except NotRoutableError as exc:
            raise StudySkipped(str(exc)) from exc
        except VolumeError as exc:
            raise PermanentStageError(str(exc)) from exc
        return StageOutcome(result=PreparedInput(expert=route.expert, input=str(target), **result))

    # -- CT ---------------------------------------------------------------------------------------------------------

    def _ct(self, files: dict[str, list[Path]], target: Path) -> dict:
        candidates = []
        for series_uid, paths in files.items():
            header = pydicom.dcmread(paths[0], stop_before_pixels=True, specific_tags=["Modality"])
            if str(header.get("Modality", "")).upper() == "CT":
                candidates.append((len(paths), series_uid))
        problems = []
        for _, series_uid in sorted(candidates, reverse=True):
            datasets = _read(files[series_uid])
            try:
                volume = volume_from_series(datasets)
            except VolumeError as exc:
                problems.append(str(exc))
                continue
            self._check_image("VISTA3D", volume.array)
            save_arrays(target, volume=volume.array.astype(np.float32, copy=False), affine=volume.affine)
            LOGGER.info("CT volume %s from series %s (%d of %d series tried)", volume.array.shape, series_uid,
                        len(problems) + 1, len(candidates))
            return {"source_series": series_uid, "source_instances": _paths_of(volume, datasets),
                    "other_evidence": [], "shape": list(volume.array.shape)}
        if not candidates:
            raise NotRoutableError("not routable: the study has no CT series")
        raise VolumeError("no CT series is one regular volume: " + "; ".join(problems))

    # -- brain MRI --------------------------------------------------------------------------------------------------

    def _brain_mri(self, files: dict[str, list[Path]], matched: dict[str, str], target: Path) -> dict:
        from engines.experts.base import ExpertInput

        if all(name in matched and matched[name] in files for name in BRATS_ORDER):
            series = {name: _read(files[matched[name]]) for name in BRATS_ORDER}
            volumes = []
            for name in BRATS_ORDER:
                try:
                    volumes.append(volume_from_series(series[name]))
                except VolumeError as exc:
                    raise type(exc)(f"{name}: {exc}") from None
            frames = {v.frame_of_reference_uid for v in volumes}
            if len(frames) != 1:
                raise NotRoutableError("not routable: the four sequences lie in different frames of reference; "
                                       "they are not co-registered")
            by_uid = {v.series_instance_uid: series[name] for name, v in zip(BRATS_ORDER, volumes)}
        else:
            datasets = _read([path for paths in files.values() for path in paths])
            chosen = brain_mri_volumes(datasets)
            volumes = list(chosen.volumes)
            by_uid = {uid: [ds for ds in datasets if ds.SeriesInstanceUID == uid]
                      for uid in chosen.series_instance_uids}
        common = ExpertInput.on_common_grid([(v.array, v.affine) for v in volumes], spacing_mm=1.0)
        t1c = volumes[0]
        self._check_image("BRATS", common.volume)
        save_arrays(target, volume=common.volume, affine=common.affine)
        sources = [_paths_of(v, by_uid[v.series_instance_uid]) for v in volumes]
        LOGGER.info("brain MRI: 4 sequences on a 1 mm grid %s", common.volume.shape[1:])
        return {
            "source_series": t1c.series_instance_uid,
            "source_instances": sources[0],
            "other_evidence": [path for paths in sources[1:] for path in paths],
            "sequences": {name: v.series_instance_uid for name, v in zip(BRATS_ORDER, volumes)},
            "shape": list(common.volume.shape),
        }

    # -- chest radiograph -------------------------------------------------------------------------------------------

    def _radiograph(self, files: dict[str, list[Path]], target: Path) -> dict:
        paths = []
        for series_paths in files.values():
            header = pydicom.dcmread(series_paths[0], stop_before_pixels=True, specific_tags=["Modality"])
            if str(header.get("Modality", "")).upper() in ("CR", "DX"):
                paths.extend(series_paths)
        datasets = _read(paths)
        radiograph = frontal_radiograph(datasets)
        self._check_image("CXR", radiograph.image)
        save_arrays(target, volume=radiograph.image)
        source = next(ds.filename for ds in datasets if ds.SOPInstanceUID == radiograph.sop_instance_uid)
        return {"source_series": radiograph.series_instance_uid, "source_instances": [source], "other_evidence": [],
                "view_position": radiograph.view_position, "shape": list(radiograph.image.shape)}
