"""The study page's "open in viewer" links: m3edge's own OHIF Viewer at /viewer/ (with the draft's SEG overlaid), and
a site's own viewer from ``VIEWER_URL_TEMPLATE``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlencode

from fastapi import FastAPI

__all__ = ["ViewerLink", "viewer_links"]


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


def viewer_links(app: FastAPI, study_uid: str, image_series_uid: str = "") -> list[ViewerLink]:
    """The links for one study: the built-in viewer when it is installed, the site's viewer when one is set."""
    from service.api.viewer import viewer_dir  # (service.api.viewer imports the dashboard's access rules)

    settings = app.state.settings
    links = []
    if (viewer_dir(settings) / "index.html").is_file():
        query = {"StudyInstanceUIDs": study_uid}
        seg_series = _result_series(app, study_uid, "SEG")
        if seg_series:  # OHIF opens the SEG in the first viewport: its CT with the segmentation overlaid
            query["initialSeriesInstanceUID"] = seg_series
        label = "Open in viewer, segmentation overlaid" if seg_series else "Open in viewer"
        links.append(ViewerLink(label, "/viewer/viewer?" + urlencode(query), external=False))
    if settings.viewer_url_template:
        url = settings.viewer_url_template.format(study_uid=quote(study_uid, safe=""),
                                                  series_uid=quote(image_series_uid, safe=""))
        links.append(ViewerLink("Open in site viewer", url, external=not url.startswith("/")))
    return links
