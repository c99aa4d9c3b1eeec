"""The Celery app the worker runs (`tas worker`, or `celery -A worker.celery_app worker`)."""

from __future__ import annotations

from tas.queue import make_celery
from tas.settings import Settings

settings = Settings()
app = make_celery(settings, include_tasks=True)

# The worker's row in `workers` (registered when ready, heartbeat, offline at shutdown).
import worker.presence  # noqa: E402, F401
