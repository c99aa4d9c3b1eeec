"""The thread that drives searches, in the API process beside the reaper.

About once a second (TAS_SEARCH_INTERVAL_S) it lists the searches that are not settled, takes
or renews the lease of each (TAS_SEARCH_LEASE_S; one conditional UPDATE, so two API processes
never drive one search at once) and advances the ones it holds. A process killed outright leaves
its leases to expire, and another process, or the same one restarted, takes its searches over
from their rows and Optuna's study. A process that stops cleanly hands its leases back at once.

Optuna's storage is opened on the first step that has a search to drive: an API process with no
search never creates it."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from tas.store import searches as store
from tas.store.searches import LeaseLost
from tas.store.unit_of_work import unit_of_work

if TYPE_CHECKING:  # the controller (and Optuna) load on the first search to drive
    from tas.search.controller import Controller

log = logging.getLogger(__name__)

#: A search whose step keeps failing (e.g. Optuna's storage does not answer) is tried again after
#: this many seconds, doubling up to BACKOFF_MAX_S, instead of every interval.
BACKOFF_S = 2.0
BACKOFF_MAX_S = 60.0


def new_owner() -> str:
    """This process's name on the leases it takes: host, pid and a random part (a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SearchLoop:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        make_controller: Callable[[], Controller],
        *,
        owner: str,
        interval_s: float,
        lease_s: float,
    ) -> None:
        self.sessions = sessions
        self._make_controller = make_controller
        self._controller: Controller | None = None
        self.owner = owner
        self.interval_s = interval_s
        self.lease_s = lease_s
        self._failures: dict[str, tuple[int, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tas-searches", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            with unit_of_work(self.sessions) as s:
                store.release_leases(s, self.owner)
        except Exception:
            log.warning("could not hand back the search leases of %s", self.owner, exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:
                log.exception("search step failed; trying again in %.1f s", self.interval_s)

    def tick(self) -> list[str]:
        """One pass over the unsettled searches; the ids of those advanced."""
        with unit_of_work(self.sessions) as s:
            ids = store.unsettled(s)
        advanced = []
        now = time.monotonic()
        for search_id in ids:
            if self._stop.is_set():
                break
            failures, due = self._failures.get(search_id, (0, 0.0))
            if due > now:
                continue
            with unit_of_work(self.sessions) as s:
                held = store.take_lease(s, search_id, self.owner, self.lease_s)
            if not held:
                continue
            try:
                if self._controller is None:
                    self._controller = self._make_controller()
                self._controller.advance(search_id)
            except LeaseLost:
                log.info("search %s is driven by another process now", search_id)
            except Exception:
                wait = min(BACKOFF_S * 2**failures, BACKOFF_MAX_S)
                self._failures[search_id] = (failures + 1, time.monotonic() + wait)
                log.exception("step of search %s failed; next try in %.0f s", search_id, wait)
                continue
            self._failures.pop(search_id, None)
            advanced.append(search_id)
        return advanced
