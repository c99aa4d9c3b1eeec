"""Celery configuration shared by the publisher (the API) and the consumer (`tas worker`).

The broker carries only job ids; the database says what a job is. Reliability settings follow
RELIABILITY.md rows 1-3 and 7: late acks, requeue on a lost worker, prefetch 1, JSON only, and a
Redis visibility timeout above the longest job (leases, not the broker, keep a job single-run)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from tas.settings import Settings

RUN_JOB = "tas.run_job"
QUEUES = ("default", "cpu", "gpu")

log = logging.getLogger(__name__)


def celery_config(settings: Settings) -> dict[str, Any]:
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.resolved_broker_url.startswith("filesystem://"):
        d = settings.broker_dir
        transport.update(
            data_folder_in=str(d / "queue"),
            data_folder_out=str(d / "queue"),
            control_folder=str(d / "control"),
            processed_folder=str(d / "processed"),
            store_processed=False,
        )
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 1,
        "task_default_queue": "default",
        "task_create_missing_queues": True,
        "task_publish_retry_policy": {
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
        },
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "worker_enable_remote_control": False,
    }


def make_celery(settings: Settings, *, include_tasks: bool = False) -> Celery:
    app = Celery("tas", include=["worker.tasks"] if include_tasks else [])
    app.conf.update(celery_config(settings))
    return app


class Publisher:
    """Sends job ids to the broker. Called only after the job's row is committed."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def publish(self, job_id: str, queue: str) -> bool:
        try:
            self.celery.send_task(RUN_JOB, args=[job_id], queue=queue)
        except Exception:  # the broker is down: the reaper publishes the queued job again later
            log.exception("could not publish job %s; the reaper will retry", job_id)
            return False
        return True
