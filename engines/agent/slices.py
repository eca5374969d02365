"""Which axial slice the model sees (the same one in every turn): the middle one, or where the expert found most.

``most_structure`` needs a segmentation before turn 1, so it uses the first ready-made result of the form's expert
(VISTA3D for CT, BraTS for the four MRI sequences) and counts the voxels of that result's label group (all labels for
``everything`` and for BraTS); for BraTS only the slices holding all three tumour labels (1, 2, 4) compete when there
is one, as in training. A result still running is waited for (up to expert_timeout_s): with this policy turn 1
cannot overlap the route's expert. Without a usable result, or when it found nothing, the middle slice is used and the
reason recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engines.agent.rendering import ImageForm, StudyImageRenderer
from engines.agent.request import ConsultationRequest, SlicePolicy
from engines.agent.expert_call import ExpertCrash, ExpertTimeout, PendingExpertResult, await_result
from engines.experts.base import ExpertError, ExpertName

__all__ = ["choose_slice"]

_FORM_EXPERT = {ImageForm.CT: ExpertName.VISTA3D, ImageForm.BRATS: ExpertName.BRATS}
BRATS_TUMOUR_LABELS = (1, 2, 4)  # BraTS training kept only slices holding all three (its fixed legend describes them)


def choose_slice(
    request: ConsultationRequest,
    policy: SlicePolicy,
    renderer: StudyImageRenderer,
    label_groups: Mapping[str, Any],
    timeout_s: float,
) -> tuple[int | None, str]:
    """``(slice index or None for the middle one, how it was chosen)``; ``(None, "")`` for a radiograph."""
    if request.form is ImageForm.CXR:
        return None, ""
    if SlicePolicy(policy) is SlicePolicy.MIDDLE:
        return None, "middle slice (the reference's default)"
    expert = _FORM_EXPERT.get(request.form)
    ready = [r for r in request.ready_results if expert is not None and ExpertName(r.expert) is expert]
    if not ready:
        return None, "most_structure: no ready-made segmentation of this study before turn 1, so the middle slice"
    asked = f"{expert.value}({ready[0].argument})" if ready[0].argument else expert.value
    if isinstance(ready[0], PendingExpertResult):
        try:
            result = await_result(ready[0].future, f"the ready-made {asked} result", timeout_s)
        except (ExpertTimeout, ExpertCrash, ExpertError, ValueError) as error:
            return None, f"most_structure: {error}, so the middle slice"
    else:
        result = ready[0]
    if result.label_volume is None:
        return None, f"most_structure: the ready-made {asked} result has no label volume, so the middle slice"
    group = label_groups.get(result.argument or "everything") if expert is ExpertName.VISTA3D else None
    labels = list(group.values()) if isinstance(group, dict) else None
    require_all = BRATS_TUMOUR_LABELS if expert is ExpertName.BRATS else None
    try:
        index = renderer.best_slice(result.label_volume, request.expert_input.affine, labels, require_all=require_all)
    except ValueError as error:
        return None, f"most_structure: the {asked} result could not be searched ({error}), so the middle slice"
    if index is None:
        return None, f"most_structure: {asked} found none of its structures, so the middle slice"
    return int(index), f"most_structure: the slice with the most voxels of {asked}"
