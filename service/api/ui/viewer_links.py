"""The study page's "open in viewer" links: m3edge's own OHIF Viewer at /viewer/ (with the draft's SEG overlaid, at
the slice the model was shown), and a site's own viewer from ``VIEWER_URL_TEMPLATE``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from fastapi import FastAPI
from pydicom import dcmread
from pydicom.uid import UID

LOGGER = logging.getLogger(__name__)

__all__ = ["ViewerLink", "slice_the_model_saw", "viewer_links"]


@dataclass(frozen=True)
class ViewerLink:
    label: str
    url: str
    external: bool  # another site's viewer (opened without a referrer)


def _result_series(app: FastAPI, study_uid: str, modality: str) -> str | None:
    from service.api.routes.dicomweb import _results  # the app's result headers, read once and cached

    for result in _results(app).of_studies([study_uid], {"Modality": [modality]}):
        return result.series_uid
    return None


def slice_the_model_saw(results_dir: Path, objects: Mapping | None) -> str | None:
    """The SOP Instance UID of the source slice the model was shown: the one the draft's overlay Secondary Capture
    references (its Source Image Sequence), or None (no overlay object, a file outside ``results_dir``, unreadable)."""
    overlay = (objects or {}).get("overlay")
    if not isinstance(overlay, Mapping) or not isinstance(overlay.get("path"), str):
        return None
    root = results_dir.resolve()
    path = Path(overlay["path"]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    try:
        header = dcmread(path, stop_before_pixels=True, specific_tags=["SourceImageSequence"])
        uid = str(header.SourceImageSequence[0].ReferencedSOPInstanceUID)
    except Exception as exc:  # noqa: BLE001 - a damaged overlay file: the link opens the study without the slice
        LOGGER.warning("the overlay of a report cannot be read (%s): the viewer link has no initial slice",
                       exc.__class__.__name__)
        return None
    return uid if UID(uid).is_valid else None


def viewer_links(app: FastAPI, study_uid: str, image_series_uid: str = "",
                 report_objects: Mapping | None = None) -> list[ViewerLink]:
    """The links for one study: the built-in viewer when it is installed, the site's viewer when one is set.

    The built-in viewer opens the draft's SEG (``initialSeriesInstanceUID``: OHIF shows its CT with the segmentation
    overlaid); a second link opens the CT at the slice the model was shown (``initialSOPInstanceUID``, from the overlay
    in ``report_objects``; OHIF's default hanging protocol starts its stack there, "sopInstanceLocation"). OHIF 3.13
    does not combine the two: given both, it picks the CT display set and leaves the SEG off."""
    from service.api.viewer import viewer_dir  # (service.api.viewer imports the dashboard's access rules)

    settings = app.state.settings
    links = []
    if (viewer_dir(settings) / "index.html").is_file():
        query = {"StudyInstanceUIDs": study_uid}
        seg_series = _result_series(app, study_uid, "SEG")
        if seg_series:  # OHIF opens the SEG in the first viewport: its CT with the segmentation overlaid
            links.append(ViewerLink("Open in viewer, segmentation overlaid", "/viewer/viewer?" + urlencode(
                {**query, "initialSeriesInstanceUID": seg_series}), external=False))
        shown = slice_the_model_saw(settings.results_dir, report_objects)
        if shown:
            links.append(ViewerLink("Open in viewer at the slice the model saw", "/viewer/viewer?" + urlencode(
                {**query, "initialSOPInstanceUID": shown}), external=False))
        if not links:
            links.append(ViewerLink("Open in viewer", "/viewer/viewer?" + urlencode(query), external=False))
    if settings.viewer_url_template:
        url = settings.viewer_url_template.format(study_uid=quote(study_uid, safe=""),
                                                  series_uid=quote(image_series_uid, safe=""))
        links.append(ViewerLink("Open in site viewer", url, external=not url.startswith("/")))
    return links
