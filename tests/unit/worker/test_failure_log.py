"""What a failed run leaves in the job's log (its submitter reads it) and in the worker's own log
(its operators read it): the job's log names each frame's file from its import root, never where
the server installed it, and leaves out what an error raised on purpose was raised from (it may
name where a file is stored); the worker's log keeps the whole chain. An unexpected error keeps
its causes in the job's log too: their frames are the ones a bug report needs."""

from __future__ import annotations

import logging
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from tas.core.data.dataset import LoadContext, Loaded
from tas.core.errors import DataError
from tas.core.spec import DatasetSpec
from tas.settings import Settings
from tas.store import datasets as dataset_store
from tas.store.orm import Job
from tests.unit.worker.test_job_log import IRIS, log_of, submit
from worker import runner
from worker.claim import run_job
from worker.runner import job_traceback

REPO = Path(runner.__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()


def with_loader(monkeypatch: pytest.MonkeyPatch, load: Any) -> None:
    """The job's dataset source, with `load` as its loader (the pipeline calls it in collect)."""
    real = dataset_store.data_source

    def source(session: Session, dataset: DatasetSpec, **kw: Any) -> dataset_store.DataSource:
        built = real(session, dataset, **kw)
        return dataset_store.DataSource(built.info, load, built.fingerprint)

    monkeypatch.setattr(dataset_store, "data_source", source)


def failed_run(sessions: sessionmaker[Session], settings: Settings) -> tuple[dict[str, Any], str]:
    """The failed job's error and its log's failure line."""
    job_id = submit(sessions, settings, IRIS)
    assert run_job(job_id, settings=settings, sessions=sessions, owner="t").status == "failed"
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.error is not None
        error = dict(job.error)
    lines = log_of(sessions, job_id)
    failure = next(line.message for line in lines if line.message.startswith("failed in stage"))
    return error, failure


def test_a_deliberate_errors_causes_stay_in_the_workers_log(
    sessions: sessionmaker[Session],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stored = settings.resolved_uploads_dir / "tenants" / "team-a" / "datasets" / ("f" * 64)

    def load(ctx: LoadContext) -> Loaded:
        try:
            (stored / "a.csv").read_bytes()
        except OSError as exc:
            raise DataError("uploaded dataset 'a' cannot be read", hint="upload it again") from exc
        raise AssertionError("the file is not there")

    with_loader(monkeypatch, load)
    with caplog.at_level(logging.INFO, logger="worker.runner"):
        error, failure = failed_run(sessions, settings)
    assert (error["type"], error["stage"]) == ("DataError", "collect")
    assert failure.startswith("failed in stage collect: DataError: uploaded dataset 'a' cannot")
    assert "Traceback (most recent call last)" in failure and f'File "{THIS}", line ' in failure
    for leak in ("FileNotFoundError", "tenants/", "f" * 64, str(REPO)):
        assert leak not in failure, leak
    # the operators' log: the whole chain, through the pipeline, the OSError and its path included
    [record] = [r for r in caplog.records if r.name == "worker.runner" and r.exc_info]
    assert record.exc_info is not None
    cause = record.exc_info[1].__cause__ if record.exc_info[1] else None
    assert isinstance(cause, FileNotFoundError) and cause.filename == str(stored / "a.csv")
    assert str(stored / "a.csv") in caplog.text


def test_an_unexpected_errors_frames_are_named_from_their_import_root(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library's error inside the pipeline: wrapped, its causes (and their frames) shown."""

    def load(ctx: LoadContext) -> Loaded:
        make_url("not a url ::")  # raises in sqlalchemy/engine/url.py, under site-packages
        raise AssertionError("make_url took it")

    with_loader(monkeypatch, load)
    error, failure = failed_run(sessions, settings)
    assert error["type"] == "ArgumentError"
    assert "The above exception was the direct cause" in failure
    assert 'File "sqlalchemy/engine/url.py", line ' in failure
    assert f'File "{THIS}", line ' in failure and 'File "tas/core/pipeline.py", line ' in failure
    assert sysconfig.get_paths()["purelib"] not in failure and str(REPO) not in failure


def test_a_frame_outside_every_import_root_keeps_its_path() -> None:
    code = compile("raise ValueError('x')", "/elsewhere/generated.py", "exec")
    try:
        exec(code)
    except ValueError as exc:
        text = job_traceback(exc)
    assert 'File "/elsewhere/generated.py", line 1' in text
    assert f'File "{THIS}", line ' in text
