"""Unknown query parameters are a 422, not silently ignored: `GET /jobs?nmae=x` returning every
job reads as "no filter matched" to a user. Add `StrictQuery` to a route's `dependencies`."""

from __future__ import annotations

import difflib

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from tas.errors import InvalidInput


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route declares, its dependencies' included (a walk over a handful
    of fields: cheaper than caching it per route object, which is not hashable)."""
    names = {f.alias for f in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def reject_unknown_query(request: Request) -> None:
    """async: a plain `def` dependency would cost every list call a thread hop."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    allowed = _query_names(route.dependant)
    unknown = [k for k in dict.fromkeys(request.query_params.keys()) if k not in allowed]
    if not unknown:
        return
    listed = ", ".join(sorted(allowed)) or "none"
    problems = []
    for name in unknown:
        close = difflib.get_close_matches(name, allowed, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        problems.append((("query", name), f"unknown query parameter; {guess}allowed: {listed}"))
    raise InvalidInput(problems)


StrictQuery = Depends(reject_unknown_query)
