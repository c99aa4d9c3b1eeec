"""The embedded broker's message order: an interrupted job's message is delivered before those of
jobs not yet started, oldest first within a priority; the queue's length is what the reaper reads."""

from __future__ import annotations

from pathlib import Path

from tas.queue import Publisher, make_celery
from tas.settings import Settings


def test_resumed_jobs_are_delivered_before_new_ones(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    settings.ensure_dirs()
    publisher = Publisher(make_celery(settings))
    assert publisher.queue_sizes(["default"]) == {"default": 0}
    for job_id, resumed in (("new-1", False), ("resumed-1", True), ("new-2", False)):
        assert publisher.publish(job_id, "default", resumed=resumed)
    assert publisher.queue_sizes(["default", "gpu"]) == {"default": 3, "gpu": 0}
    order = []
    with publisher.celery.connection_for_read() as conn:
        channel = conn.default_channel
        while (message := channel.basic_get("default")) is not None:
            order.append(message.decode()[0][0])
            message.ack()
    assert order == ["resumed-1", "new-1", "new-2"]
    assert not list((settings.broker_dir / "queue").iterdir())
