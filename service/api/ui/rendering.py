"""Jinja2 pages with what every page shows: who is logged in, the CSRF token for its forms, the AI-draft notice.

Autoescaping is on for every template; pages are sent with a Content-Security-Policy that allows only this site's own
scripts and styles (and ``data:`` images for the overlay), and are never cached or framed.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from service.security import Principal

__all__ = ["PageRenderer", "TEMPLATES_DIR", "STATIC_DIR", "DRAFT_NOTICE", "PAGE_HEADERS"]

API_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = API_DIR / "templates"
STATIC_DIR = API_DIR / "static"
DRAFT_NOTICE = ("Results shown here are AI-generated DRAFTS for review by a qualified reader. They are not a diagnosis "
                "until a reader has approved or amended them.")
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _when(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value) -> str:
    if value is None:
        return ""
    value = float(value)
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _size(value) -> str:
    value = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def _dicom_date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if value and len(value) == 8 and value.isdigit() else value or ""


def _patient_value(value: str | None) -> str:
    """A patient attribute as shown: "not recorded" for a study received before m3edge kept them (NULL), a dash for
    instances that carried none."""
    if value is None:
        return "not recorded"
    return value or "—"


def _person_name(value: str | None) -> str:
    """A DICOM PN (``Family^Given^Middle^Prefix^Suffix``, groups joined by ``=``) as people write it."""
    if not value:
        return _patient_value(value)
    family, _, rest = value.split("=")[0].partition("^")
    given = " ".join(p for p in rest.split("^") if p)
    return f"{family}, {given}" if family and given else family or given


class PageRenderer:
    def __init__(self, templates_dir: Path = TEMPLATES_DIR) -> None:
        self.environment = Environment(loader=FileSystemLoader(str(templates_dir)),
                                       autoescape=select_autoescape(["html"], default=True), auto_reload=False)
        self.environment.filters.update(when=_when, seconds=_seconds, size=_size, dicom_date=_dicom_date,
                                        patient_value=_patient_value, person_name=_person_name)

    def render(self, request: Request, template: str, context: dict, *, user: Principal | None = None,
               status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
        csrf = request.app.state.sessions.csrf_token(request) if user is not None else ""
        page = self.environment.get_template(template).render(
            request=request, user=user, csrf_token=csrf, draft_notice=DRAFT_NOTICE, **context)
        return HTMLResponse(page, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})
