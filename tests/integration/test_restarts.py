"""Restarts of the job-running process (Ctrl-C, SIGTERM) are preemptions, not failures: the
job resumes each time and ends with the weights of an uninterrupted run, on both stacks and with
one or two pool children."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.helpers.artifacts import model_file, same_weights
from tests.helpers.lifecycle import digits, epoch_of, running_past, service, stop_and_check

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("concurrency", [1, 2])
@pytest.mark.parametrize("kind", ["embedded", "redis_pg"])
def test_three_restarts_are_preemptions_not_failures(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, concurrency: int
) -> None:
    with service(request, tmp_path, kind, concurrency=concurrency) as svc:
        st = svc.stack
        ref = st.wait(st.submit(digits("reference", 40))["id"], timeout=300)
        assert ref["status"] == "succeeded", st.logs()
        job_id = st.submit(digits("restarted", 40))["id"]
        seen = 1
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
            seen = epoch_of(st.wait(job_id, predicate=running_past(seen), timeout=180))
            stop_and_check(svc.runner, sig)
            if svc.embedded:
                st.http.close()
                st.http = httpx.Client(base_url=st.base_url, timeout=30)
            svc.start()
            held = st.job(job_id)
            assert held["status"] in ("queued", "running"), (held, st.logs())
            assert held["attempts"] <= 1 and held["error"] is None, held
        done = st.wait(job_id, timeout=300)
        log = svc.worker_log()
        assert done["status"] == "succeeded", (done, st.logs())
        assert done["attempts"] == 1, done["attempt_log"]
        assert done["preemptions"] == 3, done["attempt_log"]
        assert [e["outcome"] for e in done["attempt_log"]] == ["preempted"] * 3 + ["succeeded"]
        assert not [s for s in done["stages"] if s["status"] == "running"]
        # A stopping worker claimed nothing: one claim per run, four runs.
        assert log.count(f"claimed job {job_id}") == 4, log
        assert same_weights(model_file(st, ref), model_file(st, done))
