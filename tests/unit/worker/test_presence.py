"""The worker's row in the `workers` table through a warm shutdown."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

import worker.presence as presence_module
from tas.settings import Settings
from tas.store.orm import Worker
from tests.helpers.store import migrated_sessions, worker_info
from worker.forkguard import GUARD
from worker.presence import Presence


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    return migrated_sessions(tmp_path)


def test_presence_registers_drains_and_goes_offline(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """The worker's row through a warm shutdown: online at ready, draining from the moment the
    shutdown begins (the signal handler only flags it: the heartbeat thread writes), offline at
    the end."""
    settings = Settings(data_dir=tmp_path, worker_heartbeat_s=30)
    running = [True]  # a job is running when the shutdown begins
    presence = Presence(settings, worker_info("p@h", ["cpu"]), sessions, busy=lambda: running[0])
    presence.start()

    def status() -> str:
        with sessions() as s:
            row = s.get(Worker, "p@h")
            assert row is not None
            return row.status

    assert status() == "online"
    # a pool child forked now starts with no presence, and free to use the database (never
    # with a section of the parent's held mid-beat); a child that would block exits by alarm
    presence_module._presence = presence
    try:
        pid = os.fork()
        if pid == 0:
            signal.alarm(5)
            with GUARD.database():
                ok = presence_module._presence is None
            os._exit(0 if ok else 1)
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        presence_module._presence = None
    presence.draining()

    def becomes(expected: str) -> str:
        deadline = time.monotonic() + 5
        while status() != expected and time.monotonic() < deadline:  # the thread writes it
            time.sleep(0.02)
        return status()

    assert becomes("draining") == "draining"
    time.sleep(0.3)
    assert status() == "draining"  # its job is still settling
    running[0] = False  # settled: offline at once, before the process goes
    assert becomes("offline") == "offline"
    presence._thread.join(2)
    assert not presence._thread.is_alive()
    presence.stop()  # Celery's own shutdown signal afterwards changes nothing
    assert status() == "offline"
