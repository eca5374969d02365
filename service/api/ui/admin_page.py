"""The administrator's page: node health, workers, queues, destinations (with C-ECHO), throughput, recent failures."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from service.api.deps import SessionDep, client_address
from service.api.ui.access import FormFields, PageAdmin, PageRefused, require_csrf
from service.api.ui.node_health import HealthCheck, echo_destination, recent_failures, worker_activity
from service.api.ui.throughput import hourly_throughput, throughput_chart
from service.destinations import DestinationsStore
from service.security import record_audit

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

THROUGHPUT_HOURS = 24


def _admin_page(request: Request, session, user, *, echo: HealthCheck | None = None, status: int = 200) -> HTMLResponse:
    health = request.app.state.node_health
    counts = hourly_throughput(session, THROUGHPUT_HOURS)
    context = {
        "checks": health.checks(session),
        "queues": health.queues(),
        "workers": worker_activity(session),
        "destinations": DestinationsStore(request.app.state.settings).load(),
        "chart": throughput_chart(counts),
        "hours": THROUGHPUT_HOURS,
        "failures": recent_failures(session),
        "echo": echo,
    }
    record_audit(session, user.name, "admin.health.read", remote_addr=client_address(request))
    return request.app.state.ui_pages.render(request, "admin.html", context, user=user, status=status)


@router.get("/admin")
def admin_page(request: Request, user: PageAdmin, session: SessionDep) -> HTMLResponse:
    return _admin_page(request, session, user)


@router.post("/admin/echo")
def echo(request: Request, user: PageAdmin, form: FormFields, session: SessionDep) -> HTMLResponse:
    require_csrf(request, form, user, session)
    destinations = DestinationsStore(request.app.state.settings).load()
    index = form.get("destination", "")
    if not index.isdigit() or int(index) >= len(destinations):
        raise PageRefused(400, "Unknown destination", "Use the C-ECHO button beside a configured destination.")
    target = destinations[int(index)]
    result = echo_destination(request.app.state.settings.dicom_ae_title, target)
    record_audit(session, user.name, "admin.destination.echo", target=str(target), remote_addr=client_address(request),
                 outcome="success" if result.state == "ok" else "failure", detail={"detail": result.detail[:200]})
    return _admin_page(request, session, user, echo=result)

