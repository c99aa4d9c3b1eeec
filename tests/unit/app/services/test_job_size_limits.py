"""A job whose model or training would exhaust a worker is refused at submit (422), before a row
is written or anything is allocated: the parameter limit, and the training memory against the
largest live worker of the job's queue (or TAS_MAX_TRAINING_MEMORY_MB when none is live)."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.services import jobs as job_service
from tas.core.spec import JobSpec
from tas.errors import InvalidInput
from tas.settings import Settings
from tas.store import workers
from tas.store.migrate import upgrade
from tas.store.orm import Job


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "var", max_training_memory_mb=200)
    s.ensure_dirs()
    upgrade(s.resolved_database_url)
    return s


def spec(hidden: list[int], device: str = "auto", **training: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "big",
            "dataset": {"name": "digits"},
            "model": {"arch": "mlp", "hidden": hidden},
            "training": {"optimizer": "adam", "batch_size": 16, **training},
            "resources": {"device": device},
        }
    )


def refusal(sessions: sessionmaker[Session], settings: Settings, job: JobSpec) -> InvalidInput:
    with sessions() as s, pytest.raises(InvalidInput) as caught:
        job_service.submit(s, job, tenant="default", max_attempts=3, settings=settings)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0  # nothing was written
    return caught.value


def accepted(sessions: sessionmaker[Session], settings: Settings, job: JobSpec) -> None:
    with sessions() as s:
        job_service.submit(s, job, tenant="default", max_attempts=3, settings=settings)


def add_worker(
    sessions: sessionmaker[Session], node: str, queues: list[str], capacity: dict[str, Any]
) -> None:
    with sessions() as s:
        workers.register(
            s, workers.WorkerInfo(node, "box", 1, queues, [{"id": "cpu"}], capacity, 1)
        )
        s.commit()


def test_billions_of_parameters_are_a_422_in_milliseconds_with_no_memory_spike(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    accepted(sessions, settings, spec([8]))  # the database and the dataset's schema are warm
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    err = refusal(sessions, settings, spec([65536, 65536, 65536]))
    elapsed = time.perf_counter() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert elapsed < 1.0, elapsed
    assert grown_mb < 50, grown_mb
    [(loc, message)] = err.problems
    assert loc == ("body", "model", "hidden")
    assert "8.6 billion parameters" in message and "65536×65536" in message
    assert "at most 150,000,000 (TAS_MAX_PARAMETERS)" in message


def test_the_parameter_limit_is_a_setting(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    small = settings.model_copy(update={"max_parameters": 1000})
    [(loc, message)] = refusal(sessions, small, spec([64])).problems
    assert loc == ("body", "model", "hidden") and "at most 1,000 (TAS_MAX_PARAMETERS)" in message


def test_without_a_live_worker_the_memory_setting_bounds_training(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    # 4096² + … ≈ 17 million parameters × 16 bytes (weights, gradients, Adam's two moments)
    [(loc, message)] = refusal(sessions, settings, spec([4096, 4096])).problems
    assert loc == ("body", "model", "hidden")
    assert "at most 200 MB (TAS_MAX_TRAINING_MEMORY_MB)" in message
    accepted(sessions, settings, spec([1024]))


def test_the_largest_live_worker_of_the_queue_is_the_bound(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    add_worker(sessions, "small@a", ["default", "cpu"], {"memory_mb": 100, "gpu_memory_mb": []})
    add_worker(sessions, "big@b", ["default", "cpu"], {"memory_mb": 400, "gpu_memory_mb": []})
    add_worker(sessions, "other@c", ["gpu"], {"memory_mb": 10**6, "gpu_memory_mb": []})
    accepted(sessions, settings, spec([4096, 4096]))  # ≈ 270 MB: fits big@b, over the setting
    [(loc, message)] = refusal(sessions, settings, spec([4096, 4096, 4096])).problems
    assert loc == ("body", "model", "hidden")
    assert "at most 400 MB (the memory of worker big@b" in message and "'default'" in message


def test_a_cuda_job_is_bounded_by_gpu_memory(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    add_worker(sessions, "gpu@a", ["gpu"], {"memory_mb": 10**6, "gpu_memory_mb": [100, 300]})
    [(_, message)] = refusal(sessions, settings, spec([4096, 4096, 4096], "cuda")).problems
    assert "at most 300 MB (the GPU memory of worker gpu@a" in message
    # a cpu job goes to queue "cpu", which no live worker consumes: the setting bounds it, not
    # the GPU worker's memory
    [(_, message)] = refusal(sessions, settings, spec([4096, 4096], "cpu")).problems
    assert "(TAS_MAX_TRAINING_MEMORY_MB)" in message


def test_a_large_batch_blames_the_batch_size(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    [(loc, message)] = refusal(sessions, settings, spec([2048], batch_size=100_000)).problems
    assert loc == ("body", "training", "batch_size")
    assert "training.batch_size 100000" in message


def test_a_clone_is_checked_as_a_submit(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    with sessions() as s:
        job = job_service.submit(s, spec([8]), tenant="default", max_attempts=3, settings=settings)
        with pytest.raises(InvalidInput, match="TAS_MAX_PARAMETERS"):
            job_service.clone(
                s,
                job,
                {"model": {"hidden": [65536, 65536]}},
                tenant="default",
                max_attempts=3,
                settings=settings,
            )


# --- the time limit every job has ---------------------------------------------------------------


def submitted(sessions: sessionmaker[Session], settings: Settings, body: dict[str, Any]) -> Job:
    with sessions() as s:
        job = job_service.submit(
            s, JobSpec.model_validate(body), tenant="default", max_attempts=3, settings=settings
        )
        s.commit()
        s.expunge(job)
        return job


def iris(**training: Any) -> dict[str, Any]:
    return {"name": "t", "dataset": {"name": "iris"}, "training": {"epochs": 1, **training}}


def test_a_spec_without_a_time_limit_gets_the_deployment_s_default(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    short = settings.model_copy(update={"default_job_minutes": 15.0})
    assert submitted(sessions, short, iris()).spec["training"]["max_minutes"] == 15
    assert submitted(sessions, short, iris(max_minutes=90)).spec["training"]["max_minutes"] == 90


def test_a_time_limit_above_the_deployment_s_is_a_422(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    strict = settings.model_copy(update={"max_job_minutes": 120.0})
    with sessions() as s, pytest.raises(InvalidInput) as caught:
        job_service.submit(
            s,
            JobSpec.model_validate(iris(max_minutes=121)),
            tenant="default",
            max_attempts=3,
            settings=strict,
        )
    [(loc, message)] = caught.value.problems
    assert loc == ("body", "training", "max_minutes")
    assert "at most 120 minutes (TAS_MAX_JOB_MINUTES)" in message
    # a default above the limit is held to the limit rather than refusing every plain spec
    odd = strict.model_copy(update={"default_job_minutes": 600.0})
    assert submitted(sessions, odd, iris()).spec["training"]["max_minutes"] == 120


def test_a_resume_cannot_raise_the_time_limit_past_the_deployment_s(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    job_id = submitted(sessions, settings, iris(max_minutes=5)).id
    strict = settings.model_copy(update={"max_job_minutes": 60.0})
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.status = "failed"
        s.flush()
        with pytest.raises(InvalidInput, match="TAS_MAX_JOB_MINUTES") as caught:
            job_service.resume(s, job, max_minutes=61, settings=strict)
        assert caught.value.problems[0][0] == ("body", "max_minutes")
        assert job_service.resume(s, job, max_minutes=60, settings=strict).status == "queued"


# --- the work of one training step --------------------------------------------------------------


def cnn(channels: list[int], device: str = "auto", **training: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "wide",
            "dataset": {"name": "digits"},
            "model": {"arch": "cnn", "channels": channels},
            "training": {"optimizer": "adam", "batch_size": 64, **training},
            "resources": {"device": device},
        }
    )


def test_a_step_of_too_much_work_is_a_422_naming_the_work_and_the_limit(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """digits' 8×8 images: a 1024-channel conv, pooled to 4×4, then 1024→1024 3×3 at 4×4 is 151
    million multiply-accumulates a sample, 58 GFLOP a step of 64. Its parameters (9.5 million)
    and memory are far inside their limits: only the step's work tells it apart."""
    strict = settings.model_copy(update={"max_step_tflop": 0.01, "max_training_memory_mb": 10**5})
    [(loc, message)] = refusal(sessions, strict, cnn([1024, 1024])).problems
    # one sample (0.9 GFLOP) would fit: the batch is what to shrink
    assert loc == ("body", "training", "batch_size")
    assert "model.channels [1024, 1024] with training.batch_size 64" in message
    assert "one training step is about 58 GFLOP (151.6 million multiply-accumulates" in message
    assert "at most 0.01 TFLOP a step (TAS_MAX_STEP_TFLOP)" in message
    accepted(sessions, strict, cnn([1024, 1024], batch_size=8))  # 7 GFLOP
    tiny = strict.model_copy(update={"max_step_tflop": 0.0005})
    [(loc, _)] = refusal(sessions, tiny, cnn([1024, 1024], batch_size=1)).problems
    assert loc == ("body", "model", "channels")  # one sample is over: the model is too big


def test_a_data_parallel_step_is_each_process_s_share(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    strict = settings.model_copy(update={"max_step_tflop": 0.04, "max_training_memory_mb": 10**5})
    refusal(sessions, strict, cnn([1024, 1024]))  # 58 GFLOP in one process
    accepted(
        sessions,
        strict.model_copy(update={"max_processes": 2}),
        JobSpec.model_validate(
            {**cnn([1024, 1024]).model_dump(mode="json"), "resources": {"processes": 2}}
        ),
    )  # 29 GFLOP a process


def test_a_job_on_a_gpu_has_the_gpu_s_step_bound(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    strict = settings.model_copy(
        update={"max_step_tflop": 0.01, "max_gpu_step_tflop": 1.0, "max_training_memory_mb": 10**5}
    )
    add_worker(sessions, "gpu@a", ["gpu"], {"memory_mb": 10**6, "gpu_memory_mb": [10**5]})
    accepted(sessions, strict, cnn([1024, 1024], "cuda"))
    [(_, message)] = refusal(sessions, strict, cnn([1024, 1024], "cpu")).problems
    assert "(TAS_MAX_STEP_TFLOP)" in message
    # an auto job goes to the default queue: the GPU bound once a live worker there has a GPU
    refusal(sessions, strict, cnn([1024, 1024]))
    add_worker(
        sessions, "gpu@b", ["default", "cpu"], {"memory_mb": 10**6, "gpu_memory_mb": [10**5]}
    )
    accepted(sessions, strict, cnn([1024, 1024]))
