from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import SessionDep, requires
from tas.store.engine import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {"description": "The database or the broker does not answer", "model": dict[str, str]}
    },
)
def readyz(session: SessionDep, request: Request, response: Response) -> dict[str, str]:
    """Readiness: the database answers and the broker accepts a connection."""
    checks: dict[str, str] = {}
    try:
        ping(session)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        with request.app.state.publisher.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    response.status_code = 200 if ok else 503
    return {"status": "ok" if ok else "unavailable", **checks}


@router.get("/metrics", include_in_schema=False, dependencies=[requires(("admin", "metrics:read"))])
def metrics(request: Request) -> Response:
    """Prometheus exposition: request counts and latencies, jobs by status."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
