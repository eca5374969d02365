"""The dashboard under ``/ui/``: server-rendered pages (Jinja2) with a little JavaScript, for reviewers and admins.

``mount_dashboard(app)`` adds its routes (left out of the OpenAPI schema: they are pages, not API), its static files,
the log-in throttle and the node-health probes to an app made by :func:`service.api.app.create_app`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from service.api.ui import admin_page, login, pages, users_page
from service.api.ui.access import LoginRequired, PageRefused
from service.api.ui.node_health import NodeHealth
from service.api.ui.rendering import STATIC_DIR, PageRenderer
from service.security.login_limits import LoginThrottle

__all__ = ["mount_dashboard", "DASHBOARD_ROUTERS", "ADMIN_ROUTER", "ADMIN_ROUTERS"]

DASHBOARD_ROUTERS = (login.router, pages.router, admin_page.router, users_page.router)
ADMIN_ROUTERS = (admin_page.router, users_page.router)  # every page of these needs the admin role
ADMIN_ROUTER = admin_page.router


def mount_dashboard(app: FastAPI) -> None:
    app.state.ui_pages = PageRenderer()
    app.state.login_throttle = LoginThrottle()
    app.state.node_health = NodeHealth(app.state.settings, app.state.intake.ledger)
    for router in DASHBOARD_ROUTERS:
        app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse(exc.location, status_code=303)

    @app.exception_handler(PageRefused)
    async def _refused(request: Request, exc: PageRefused):
        user = getattr(request.state, "principal", None)
        return request.app.state.ui_pages.render(request, "error.html", {"title": exc.title, "detail": exc.detail},
                                                 user=user, status=exc.status)
