"""Errors as RFC 9457 problem details (``application/problem+json``)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["Problem", "install_problem_handlers", "problem_response", "PROBLEM_JSON"]

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """Raise from a route: status, a short title, and a detail that says what to do."""

    def __init__(self, status: int, title: str, detail: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}


def problem_response(path: str, status: int, title: str, detail: str = "", headers: dict | None = None,
                     extra: dict | None = None) -> JSONResponse:
    """A problem-details answer for ``path`` (also used where there is no route yet: the request gate)."""
    body = {"type": "about:blank", "title": title, "status": status, "instance": path}
    if detail:
        body["detail"] = detail
    body.update(extra or {})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _response(request: Request, status: int, title: str, detail: str = "", headers: dict | None = None,
              extra: dict | None = None) -> JSONResponse:
    return problem_response(request.url.path, status, title, detail, headers, extra)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return _response(request, exc.status, exc.title, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _response(request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")} for e in exc.errors()]
        return _response(request, 422, "invalid request", "see errors", extra={"errors": errors})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger(__name__).exception("unhandled error on %s %s", request.method, request.url.path)
        return _response(request, 500, "internal error", "the error was logged; nothing was changed")
