"""Who may associate: calling AE titles from ``DICOM_ALLOWED_AES`` (each optionally bound to a host), else loopback only."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from dicom_node.network import AllowedCaller

__all__ = ["AccessPolicy", "AccessRefusal", "CALLING_AE_NOT_RECOGNISED"]

LOGGER = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason): rejected-permanent, DICOM UL service-user, calling-AE-title-not-recognized.
CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)


@dataclass(frozen=True)
class AccessRefusal:
    """Why a caller was refused, worded for the log; ``rejection`` is the A-ASSOCIATE-RJ (result, source, reason)."""

    reason: str
    rejection: tuple[int, int, int] = CALLING_AE_NOT_RECOGNISED


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _resolve(host: str) -> frozenset:
    ip = _ip(host)
    if ip is not None:
        return frozenset({ip})
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        LOGGER.warning("allowed caller host %r does not resolve; callers bound to it will be refused", host)
        return frozenset()
    return frozenset(ip for info in infos if (ip := _ip(info[4][0])) is not None)


class AccessPolicy:
    """Decides whether a calling AE title at an address may associate. Host names resolve once, at construction."""

    def __init__(self, allowed: Sequence[AllowedCaller]) -> None:
        self._allowed = tuple(allowed)
        self._addresses = {caller: _resolve(caller.host) for caller in self._allowed if caller.host is not None}

    @property
    def loopback_only(self) -> bool:
        return not self._allowed

    def describe(self) -> str:
        if self.loopback_only:
            return "loopback callers only (DICOM_ALLOWED_AES is empty)"
        return "calling AE titles " + ", ".join(str(caller) for caller in self._allowed)

    def check(self, calling_ae: str, address: str) -> AccessRefusal | None:
        """``None`` when the caller may associate, else why not."""
        calling_ae = calling_ae.strip()
        ip = _ip(address)
        if self.loopback_only:
            if ip is not None and ip.is_loopback:
                return None
            return AccessRefusal(f"{calling_ae!r} from {address}: only loopback callers are accepted without DICOM_ALLOWED_AES")
        matching = [caller for caller in self._allowed if caller.ae_title == calling_ae]
        if not matching:
            return AccessRefusal(f"calling AE title {calling_ae!r} from {address} is not in DICOM_ALLOWED_AES")
        for caller in matching:
            if caller.host is None or (ip is not None and ip in self._addresses[caller]):
                return None
        return AccessRefusal(f"calling AE title {calling_ae!r} is allowed, but not from {address}")
