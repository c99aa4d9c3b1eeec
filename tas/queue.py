"""Celery configuration shared by the publisher (the API) and the consumer (`tas worker`).

The broker carries only job ids; the database says what a job is. Reliability settings: late
acks, requeue on a lost worker, prefetch 1, JSON only, and a Redis visibility timeout above the
longest job (leases, not the broker, keep a job single-run)."""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

from tas.settings import Settings

RUN_JOB = "tas.run_job"
QUEUES = ("default", "cpu", "gpu")

#: Message priorities, lower first (Redis's order): a job that ran before and was interrupted (a
#: lost worker, a preemption) goes ahead of jobs that have not started, which wait at their own.
PRIORITY_RESUME = 0
PRIORITY_NEW = 6

log = logging.getLogger(__name__)


class _PriorityChannel(filesystem.Channel):
    """kombu's filesystem channel, delivering by priority then age: the file name starts with the
    message's priority digit and the time in nanoseconds, and the channel reads the lowest name first.
    The file is written under a name no reader matches and renamed into place, so a reader never
    takes a half-written message."""

    def _put(self, queue: Any, message: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        priority = self._get_message_priority(message, reverse=False)
        name = f"{priority}{time.time_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"
        try:
            with open(partial, "wb") as f:
                f.write(dumps(message).encode())
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class FilesystemTransport(filesystem.Transport):
    """The embedded broker: kombu's filesystem transport with message priorities."""

    Channel = _PriorityChannel


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
            # How often an idle worker looks for a message (kombu's default is 1 s, which was
            # most of a job's wait to start).
            polling_interval=settings.broker_poll_s,
        )
    config: dict[str, Any] = {
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
        # A pool child killed under a job is reported (and its run settled) after this, not 10 s.
        "worker_lost_wait": 2.0,
        "task_default_priority": PRIORITY_NEW,
    }
    if settings.resolved_broker_url.startswith("filesystem://"):
        config["broker_transport"] = f"{__name__}:FilesystemTransport"
    return config


class TasCelery(Celery):
    """A Celery app with the settings it was made from. The worker's task, gate and presence
    reach the settings through the app Celery hands each of them, so none of them imports the
    module that makes the app (`worker.celery_app`, which imports them)."""

    def __init__(self, settings: Settings, main: str = "tas", **kwargs: Any) -> None:
        super().__init__(main, **kwargs)
        self.settings = settings
        self.conf.update(celery_config(settings))

    def __reduce_keys__(self) -> dict[str, Any]:
        # Celery rebuilds a pickled app by calling its class with these: the settings come along.
        return {**super().__reduce_keys__(), "settings": self.settings}


def make_celery(settings: Settings) -> TasCelery:
    """The publisher's app (the API); the worker adds its pool and its task to its own."""
    return TasCelery(settings)


class Publisher:
    """Sends job ids to the broker. Called only after the job's row is committed."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def publish(self, job_id: str, queue: str, *, resumed: bool = False) -> bool:
        """`resumed`: the job ran before and was interrupted; it goes ahead of new jobs."""
        return send_job(self.celery, job_id, queue, resumed=resumed)

    def queue_sizes(self, queues: list[str]) -> dict[str, int] | None:
        """Messages waiting in each queue (not those a worker holds unacknowledged); None when
        the broker cannot be asked."""
        try:
            with self.celery.connection_for_read() as conn:
                channel = conn.default_channel
                return {q: _queue_size(channel, q) for q in queues}
        except Exception:
            log.exception("could not read the broker's queue lengths")
            return None


def _queue_size(channel: Any, queue: str) -> int:
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except channel.connection.client.channel_errors:  # never declared: nothing was sent there
        return 0


def send_job(celery: Celery, job_id: str, queue: str, *, resumed: bool = False) -> bool:
    """Publish a job id. False when the broker is down: the reaper publishes it again later."""
    try:
        celery.send_task(
            RUN_JOB,
            args=[job_id],
            queue=queue,
            priority=PRIORITY_RESUME if resumed else PRIORITY_NEW,
        )
    except Exception:
        log.exception("could not publish job %s; the reaper will retry", job_id)
        return False
    return True
