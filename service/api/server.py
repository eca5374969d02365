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
from typing import Any

from service.config import Settings

__all__ = ["uvicorn_options"]


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
