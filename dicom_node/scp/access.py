"""Who may associate: calling AE titles from ``DICOM_ALLOWED_AES`` (each optionally bound to a host), else loopback only;
and under which called AE title (ours, unless ``DICOM_REQUIRE_CALLED_AE`` is off).

The node's own health check (the admin page, ``m3edge doctor``) C-ECHOes the node from this machine with our own AE
title as calling AE. It must pass whatever ``DICOM_ALLOWED_AES`` says, without becoming a way in: a caller on a
loopback address, calling with our AE title and proposing nothing but the Verification SOP Class, is let in; it can
C-ECHO and nothing else (every other presentation context would be refused, and it proposes none). Anyone on this
machine can already see that the port answers, so a C-ECHO tells them nothing more; a caller that proposes anything
beside Verification is judged by the list like everyone else.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from dicom_node.network import AllowedCaller

__all__ = ["AccessPolicy", "AccessRefusal", "CALLING_AE_NOT_RECOGNISED", "CALLED_AE_NOT_RECOGNISED", "VERIFICATION"]

LOGGER = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason): rejected-permanent, DICOM UL service-user, calling-AE-title-not-recognized.
CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
# rejected-permanent, DICOM UL service-user, called-AE-title-not-recognized.
CALLED_AE_NOT_RECOGNISED = (0x01, 0x01, 0x07)
VERIFICATION = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class AccessRefusal:
    """Why a caller was refused, worded for the log; ``rejection`` is the A-ASSOCIATE-RJ (result, source, reason)."""

    reason: str
    rejection: tuple[int, int, int] = CALLING_AE_NOT_RECOGNISED

    @property
    def kind(self) -> str:
        """The A-ASSOCIATE-RJ reason in words."""
        return "called AE not recognised" if self.rejection == CALLED_AE_NOT_RECOGNISED else "calling AE not recognised"


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
    """Decides whether a calling AE title at an address may associate, and whether it called us by our AE title.

    Host names resolve once, at construction. ``own_ae_title`` is ours (None: the called AE title is not checked and
    there is no health-check identity, for callers of ``check`` that have no AE title of their own).
    """

    def __init__(self, allowed: Sequence[AllowedCaller], *, own_ae_title: str | None = None,
                 require_called_ae: bool = True) -> None:
        self._allowed = tuple(allowed)
        self._addresses = {caller: _resolve(caller.host) for caller in self._allowed if caller.host is not None}
        self._own = own_ae_title.strip() if own_ae_title else None
        self._require_called_ae = require_called_ae and self._own is not None

    @property
    def loopback_only(self) -> bool:
        return not self._allowed

    def describe(self) -> str:
        if self.loopback_only:
            return "loopback callers only (DICOM_ALLOWED_AES is empty)"
        return "calling AE titles " + ", ".join(str(caller) for caller in self._allowed)

    def check(self, calling_ae: str, address: str, *, called_ae: str | None = None,
              proposed: Collection[str] = ()) -> AccessRefusal | None:
        """``None`` when the caller may associate, else why not. ``proposed``: the abstract syntaxes it proposes."""
        refusal = self._check_caller(calling_ae.strip(), address, proposed)
        if refusal is not None:
            return refusal
        if self._require_called_ae and called_ae is not None and called_ae.strip() != self._own:
            return AccessRefusal(f"{calling_ae.strip()!r} from {address} called AE title {called_ae.strip()!r}, "
                                 f"not ours ({self._own}); DICOM_REQUIRE_CALLED_AE=false accepts any",
                                 CALLED_AE_NOT_RECOGNISED)
        return None

    def is_own_health_check(self, calling_ae: str, address: str, proposed: Collection[str]) -> bool:
        """Our own AE title, from a loopback address, proposing only Verification (see the module's docstring)."""
        ip = _ip(address)
        return (self._own is not None and calling_ae == self._own and ip is not None and ip.is_loopback
                and bool(proposed) and all(str(syntax) == VERIFICATION for syntax in proposed))

    def _check_caller(self, calling_ae: str, address: str, proposed: Collection[str]) -> AccessRefusal | None:
        if self.is_own_health_check(calling_ae, address, proposed):
            return None
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
