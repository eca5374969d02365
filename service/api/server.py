"""How uvicorn serves the API: where it listens, TLS, and whose forwarded headers it believes.

uvicorn believes ``X-Forwarded-For`` and ``X-Forwarded-Proto`` from 127.0.0.1 unless told otherwise, so any local
process (or a proxy that passes the header through) could choose the client address the audit log records and the
log-in limit counts. Here forwarded headers are believed only from ``API_TRUSTED_PROXIES`` (empty by default: from
nobody; uvicorn's ``FORWARDED_ALLOW_IPS`` environment variable is not read). ``API_TLS`` serves HTTPS directly
(the session cookie is then ``Secure``); behind a TLS proxy, name the proxy in ``API_TRUSTED_PROXIES`` so its
``X-Forwarded-Proto: https`` marks the cookie ``Secure`` (or set ``SESSION_COOKIE_SECURE=always``).
"""

from __future__ import annotations

import ssl
import threading
import time
from typing import Any

from service.config import Settings
from service.running import ServiceStartError

__all__ = ["uvicorn_options", "ApiThread"]


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``/``uvicorn.run`` from the settings (``m3edge api`` and ``serve``)."""
    options: dict[str, Any] = {
        "host": settings.api_host,
        "port": settings.api_port,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "proxy_headers": bool(settings.api_trusted_proxies),
        "forwarded_allow_ips": list(settings.api_trusted_proxies),
    }
    tls = settings.api_tls
    if tls is not None:
        options.update(ssl_certfile=str(tls.certificate), ssl_keyfile=str(tls.private_key))
        if tls.ca_certificates is not None:
            options["ssl_ca_certs"] = str(tls.ca_certificates)
        if tls.require_client_certificate:
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


class ApiThread:
    """The HTTP API served by uvicorn in a thread of this process (``m3edge serve``)."""

    def __init__(self, app, settings: Settings) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **uvicorn_options(settings)))
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; refuse (ServiceStartError) when uvicorn could not listen, instead of running without it."""
        config = self.server.config
        self._thread = threading.Thread(target=self.server.run, name="m3edge-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(0.05)
        if not self.server.started:
            self.stop()
            raise ServiceStartError(f"the HTTP API could not listen on {config.host}:{config.port} (set "
                                    "M3EDGE_API_HOST and M3EDGE_API_PORT)")

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
