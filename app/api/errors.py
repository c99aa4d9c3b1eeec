"""One handler for every domain error, and a last-resort handler so nothing leaks a traceback:
an exception no handler expected is logged here and answered with a 500 in the same `detail`
envelope as every other error, naming nothing of the server's internals."""

from __future__ import annotations

import email.message
import logging
import math
from typing import Any

from fastapi import FastAPI, Request, params
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from tas.errors import DomainError, InvalidInput

log = logging.getLogger(__name__)


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    if isinstance(exc, InvalidInput):
        detail = [
            {"loc": list(loc), "msg": msg, "type": "value_error"} for loc, msg in exc.problems
        ]
        return JSONResponse({"detail": detail}, status_code=exc.status_code)
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=exc.headers)


def is_json(content_type: str | None) -> bool:
    """What FastAPI parses as a JSON body: application/json or application/*+json."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def send_json_message(content_type: str | None, *, also: str = "") -> str:
    """What a client that sent no JSON content type (curl -d without -H, a form post) should do."""
    got = f"got {content_type!r}" if content_type else "no Content-Type header was sent"
    alternative = f" (or {also})" if also else ""
    return (
        f"send the body as JSON with the header 'Content-Type: application/json'{alternative};"
        f" {got} (curl: -H 'Content-Type: application/json' -d '{{...}}')"
    )


def _takes_json_body(route: object) -> bool:
    body = route.body_field if isinstance(route, APIRoute) else None
    return body is not None and not isinstance(body.field_info, params.Form)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, except when a JSON-body route got a body of another content type: FastAPI
    then validates the raw bytes and answers "Input should be a valid dictionary", which hides
    the actual mistake. That case is a 415 saying which header to send, for every JSON route."""
    assert isinstance(exc, RequestValidationError)
    content_type = request.headers.get("content-type")
    if (
        _takes_json_body(request.scope.get("route"))
        and not is_json(content_type)
        and any(tuple(e.get("loc", ()))[:1] == ("body",) for e in exc.errors())
    ):
        detail = [
            {
                "loc": ["header", "content-type"],
                "msg": send_json_message(content_type),
                "type": "unsupported_media_type",
            }
        ]
        return JSONResponse({"detail": detail}, status_code=415)
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


def _json_safe(value: Any) -> Any:
    """The errors echo the input they refused, and strict JSON has no number for a non-finite
    float (a body's `1e999` parses as infinity): such a value is echoed as its string."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


#: What a client is told about an exception the API did not expect (the log has the rest).
INTERNAL_ERROR = "internal server error: the request failed on the server and was logged"


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The last resort (Starlette runs it in its outermost middleware, after the request's
    dependencies have rolled back): log the exception with the request it broke, answer 500."""
    log.error(
        "unhandled %s in %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc
    )
    return JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, domain_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
