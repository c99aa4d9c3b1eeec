"""The Celery app the worker runs (`tas worker`, or `celery -A worker.celery_app worker`).

The worker's wiring, in one place: the settings are read once, and the pool and the task are
given to the app as objects, not as module paths in strings. No other worker module imports this
one; each reaches the settings through the app Celery hands it (`app.settings`)."""

from __future__ import annotations

# The worker's row in `workers` (registered when ready, heartbeat, offline at shutdown): the module
# connects its handlers to Celery's signals when it is imported.
import worker.presence  # noqa: F401
from tas.queue import make_celery
from tas.settings import Settings
from worker import tasks
from worker.pool import TaskPool

settings = Settings()
app = make_celery(settings)
# `--pool prefork` (the default) runs this pool: it replaces a child that exited within
# milliseconds.
app.conf.worker_pool = TaskPool
tasks.register(app)
