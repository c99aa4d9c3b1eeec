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

from app.schemas.errors import ErrorOut
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


#: Answers every operation of a kind can give, whatever its route: one that needs an API key (its
#: `security`) refuses a caller without a valid key (401) or without the scope (403); a path names
#: an object that may not exist (or belong to another tenant); a body that cannot be parsed at all
#: (not UTF-8, a broken multipart body) is FastAPI's and Starlette's 400, and one larger than its
#: route allows a 413 (app/api/body_limit.py, or the route's own limit); a JSON body sent as
#: something else is a 415 (`validation_error_handler`).
_KEY_ERRORS = {
    "401": "No API key, or one that is not valid (unknown, revoked or expired)",
    "403": "The API key lacks the scope this route needs: the `detail` names it.",
}
_PATH_ERRORS = {"404": "No such object: the `detail` names it."}
_BODY_ERRORS = {
    "400": "The body could not be parsed (not UTF-8, or a broken multipart body).",
    "413": "The body is larger than allowed: the `detail` names the limit and its setting.",
}
_JSON_BODY_ERRORS = {
    "415": "The body was not sent as JSON: the `detail` says which header to send."
}
_ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorOut"}


def document_errors(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with the errors every route can answer (their status codes from the
    operation's own parameters and body, so a new route is covered without listing it), and the
    error body's schema on each error response a route documents without one."""
    for operation in (op for item in document.get("paths", {}).values() for op in item.values()):
        responses: dict[str, Any] = operation.setdefault("responses", {})
        body_types = operation.get("requestBody", {}).get("content", {})
        kinds = (
            (_KEY_ERRORS, bool(operation.get("security"))),
            (_PATH_ERRORS, any(p.get("in") == "path" for p in operation.get("parameters", []))),
            (_BODY_ERRORS, bool(body_types)),
            (_JSON_BODY_ERRORS, "application/json" in body_types),
        )
        for errors, applies in kinds:
            for code, description in errors.items() if applies else ():
                responses.setdefault(code, {"description": description})
        for code, response in responses.items():
            if code.startswith(("4", "5")) and "content" not in response:
                response["content"] = {"application/json": {"schema": _ERROR_SCHEMA}}
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorOut"] = error_schema
    return document


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, domain_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    # Built on the first request for it, once every router is included.
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
