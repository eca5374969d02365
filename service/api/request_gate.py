"""The request gate: a request that carries a body is let in only once its caller is known, and only as far as its
route's limit.

FastAPI reads and parses a route's JSON body before it runs the route's dependencies, so without this gate anyone
could make the API buffer a body of any size before the token check (and get 422 instead of 401). The gate is an ASGI
middleware in front of every route. For a request with a body (a ``Content-Length`` other than 0, or
``Transfer-Encoding``) it looks up the route's :class:`BodyRule` in :data:`BODY_RULES` and, before a byte of the body
is read:

1. checks the caller the rule names, with the same functions the routes' dependencies use (so it answers exactly what
   the route would have): a bearer token or a session cookie with its CSRF header for ``/api`` and ``/dicomweb``
   (401, 403), the admin role for ``/api/v1/admin`` (403, audited), a dashboard session for ``/ui`` forms (a redirect
   to the log-in page). The caller it found is handed to the route's dependency (``request.state.api_caller`` or
   ``page_user``), which does not look it up again;
2. refuses a declared ``Content-Length`` over the rule's limit (413), and stops a body sent without one (chunked) as
   soon as it passes the limit (413): the app never holds more than the limit.

A rule without a limit leaves the body to its route, which streams it and bounds it itself: STOW-RS, whose parts go to
the spool as they arrive. Its caller is still checked here first, so STOW-RS reads nothing from an unknown caller.

Why our own limit and not FastAPI's ``max_body_size`` (0.165, Starlette's ``RequestBodyLimitMiddleware``): at the
app level it sits outside every user middleware and turns any answer to a request whose ``Content-Length`` is over
the limit into a plain-text 413, this gate's 401 included; per route it must be repeated on every route and router,
where a route that forgets it is unbounded. One table here covers every route, including the ones not written yet.
Measured with 500 MiB bodies (``tests/security``): a refused body costs the server at most 1 MiB of memory and under
0.3 s, against +1,000 MiB and 2-5 s before.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import authenticate_caller, check_admin
from service.api.problems import Problem, problem_response
from service.api.ui.access import LoginRequired
from service.db.session import session_scope

__all__ = ["RequestGate", "BodyRule", "CallerCheck", "BODY_RULES", "BodyTooLarge", "rule_for"]

KIB = 1024


class CallerCheck(str, enum.Enum):
    """Who may send a body to a route."""

    ANYONE = "anyone"  # the log-in form; routes that read no body
    CALLER = "caller"  # a bearer token, or a session cookie with its CSRF header (every /api and /dicomweb route)
    ADMIN = "admin"  # the same, with the admin role
    PAGE = "page"  # a dashboard session cookie (the form's CSRF token is checked by its route)


@dataclass(frozen=True)
class BodyRule:
    """The routes a path pattern names (``methods`` empty: any method), who may send them a body, and how much."""

    pattern: str
    caller: CallerCheck
    limit: int | None  # bytes; None: the route streams the body and bounds it itself
    methods: frozenset[str] = frozenset()

    def matches(self, method: str, path: str) -> bool:
        # DOTALL: a path may hold any character (a fuzzer's control characters too); ".*" must match them all
        return (not self.methods or method in self.methods) and re.fullmatch(self.pattern, path, re.DOTALL) is not None


# First match wins. JSON bodies and forms are small; the routing rules' YAML may be up to 200,000 characters.
BODY_RULES: tuple[BodyRule, ...] = (
    BodyRule(r"/ui/login", CallerCheck.ANYONE, 16 * KIB),
    BodyRule(r"/ui/.*", CallerCheck.PAGE, 64 * KIB),
    BodyRule(r"/api/v1/admin/routing-rules", CallerCheck.ADMIN, 1024 * KIB),
    BodyRule(r"/api/v1/admin(/.*)?", CallerCheck.ADMIN, 64 * KIB),
    BodyRule(r"/api/.*", CallerCheck.CALLER, 64 * KIB),
    BodyRule(r"/dicomweb/studies(/[^/]+)?", CallerCheck.CALLER, None, frozenset({"POST"})),  # STOW-RS: streamed
    BodyRule(r"/dicomweb/.*", CallerCheck.CALLER, 64 * KIB),
    BodyRule(r".*", CallerCheck.ANYONE, 64 * KIB),  # health, metrics, docs, static files: no route reads a body
)


def rule_for(method: str, path: str) -> BodyRule:
    return next(rule for rule in BODY_RULES if rule.matches(method, path))


class BodyTooLarge(HTTPException):
    """Raised into the app when a streamed body passes its limit (FastAPI lets HTTPException through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"send at most {limit // KIB} KiB to this route")
        self.limit = limit


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


def _too_large(path: str, limit: int) -> Response:
    return problem_response(path, 413, "request body too large", f"send at most {limit // KIB} KiB to this route",
                            headers={"Connection": "close"})


class _BoundedReceive:
    """The app's ``receive``, which raises :class:`BodyTooLarge` once the body passes ``limit`` bytes."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.received = 0
        self.exceeded = False

    async def __call__(self) -> Message:
        if self.exceeded:
            raise BodyTooLarge(self.limit)
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                raise BodyTooLarge(self.limit)
        return message


class RequestGate:
    """ASGI middleware: see the module's docstring. Registered by ``create_app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        rule = rule_for(scope["method"], scope["path"])
        if rule.caller is not CallerCheck.ANYONE:
            refusal = await run_in_threadpool(_check_caller, Request(scope), rule.caller)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        if rule.limit is None:
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > rule.limit:
            await _too_large(scope["path"], rule.limit)(scope, receive, send)
            return
        await self._bounded(scope, receive, send, rule.limit)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        bounded = _BoundedReceive(receive, limit)
        started = replaced = False

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return
            if bounded.exceeded and not started:
                # whatever the app made of the exception (a 413, a 400, a page), the answer is this route's 413
                if message["type"] == "http.response.start":
                    started = replaced = True
                    await _too_large(scope["path"], limit)(scope, receive, send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded, guarded_send)
        except BodyTooLarge:
            if started:
                raise
            await _too_large(scope["path"], limit)(scope, receive, send)


def _check_caller(request: Request, check: CallerCheck) -> Response | None:
    """None when the caller may send its body (and ``request.state.principal`` is set); the refusal otherwise."""
    with session_scope(request.app.state.session_factory) as session:
        try:
            if check is CallerCheck.PAGE:
                principal = request.app.state.sessions.principal(request, session)
                if principal is None:
                    return RedirectResponse(LoginRequired("/ui/").location, status_code=303)
            else:
                principal = authenticate_caller(request, session)
                if check is CallerCheck.ADMIN:
                    check_admin(request, session, principal)
        except Problem as exc:
            return problem_response(request.url.path, exc.status, exc.title, exc.detail, exc.headers)
    # handed to the route's own dependency, under the name of the check that found it (never taken for another check)
    setattr(request.state, "page_user" if check is CallerCheck.PAGE else "api_caller", principal)
    return None
