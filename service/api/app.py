"""The HTTP service: review API, administration, health and metrics (and, as they arrive, DICOMweb and the dashboard).

``create_app(settings, session_factory, intake)`` wires the routes to what it is given; the composition root
(``service.composition.build_api``) builds those from the settings, and tests pass their own.
"""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from service.api.metrics import make_registry
from service.api.problems import install_problem_handlers
from service.api.routes import admin, dicomweb, health, reports, studies
from service.api.request_gate import RequestGate
from service.api.sessions import DashboardSessions
from service.api.ui import mount_dashboard
from service.api.viewer import mount_viewer
from service.config import Settings
from service.pipeline.intake import PipelineIntake
from service.review import ReviewService
from service.routing.store import RoutingRulesStore

__all__ = ["create_app"]


def create_app(settings: Settings, session_factory: sessionmaker[Session], intake: PipelineIntake) -> FastAPI:
    """The API on ``session_factory``, sending work through ``intake``; ``service.composition.build_api`` builds
    them from the settings."""
    app = FastAPI(
        title="m3edge",
        version="0.1.0",
        description="Review API and administration of m3edge. Every /api route needs a bearer token; "
        "admin routes need the admin role. Every result is an AI draft for a qualified reader.",
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.intake = intake
    app.state.review = ReviewService(settings, deliver=intake.dispatcher.deliver)
    app.state.routing_rules = RoutingRulesStore(settings)
    app.state.sessions = DashboardSessions.from_settings(settings)
    app.state.metrics_registry = make_registry(session_factory, settings.dicom_status_file)
    install_problem_handlers(app)
    app.include_router(health.router)
    app.include_router(studies.router)
    app.include_router(reports.router)
    app.include_router(admin.router)
    app.include_router(dicomweb.router)
    mount_dashboard(app)
    mount_viewer(app)
    app.add_middleware(RequestGate)  # the caller is checked, and the body bounded, before any route reads a body
    return app
