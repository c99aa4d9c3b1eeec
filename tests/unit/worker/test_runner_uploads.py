"""The worker's side of uploads and init_from, in process (no broker): a job on an uploaded CSV runs
to the end with its preprocessed tensors cached; what a job was submitted with and has since gone
(the dataset, its file, the init_from version) fails the job in `collect`, saying so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
from sqlalchemy.orm import Session, sessionmaker

from tas.core.data.dataset import LoadContext
from tas.core.data.formats.upload import UploadError
from tas.core.errors import DataError, TrainingError
from tas.core.models import build_model
from tas.core.spec import JobSpec, ModelSpec
from tas.settings import Settings
from tas.store import datasets as dataset_store
from tas.store import files as file_store
from tas.store import jobs as job_store
from tas.store import registry as registry_store
from tas.store.orm import Dataset, Job, JobStatus, ModelVersion
from worker.claim import run_job
from worker.runner import job_data

CSV = b"a,b,label\n" + b"".join(
    f"{i % 7},{(i * 3) % 5},{'yes' if i % 7 > 3 else 'no'}\n".encode() for i in range(80)
)


def add_upload(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path, tenant: str = "default"
) -> Dataset:
    """What POST /datasets does, without HTTP."""
    from tas.core.data.formats.upload import UploadOptions, read_upload

    spool = file_store.Spool(file_store.tmp_dir(settings), 1 << 20)
    spool.write(CSV)
    spool.finish()
    schema = read_upload(
        spool.path, "tiny.csv", UploadOptions(target="label"), file_store.upload_limits(settings)
    ).schema()
    with sessions() as s:
        row, created = dataset_store.add_dataset(
            s,
            settings,
            tenant=tenant,
            name="tiny",
            file_name="tiny.csv",
            spool=spool,
            schema=schema,
        )
        s.commit()
    assert created
    return row


def spec(dataset_id: str, **model: Any) -> dict[str, Any]:
    return {
        "name": "tiny",
        "dataset": {"id": dataset_id, "test_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [8], **model},
        "training": {"epochs": 2, "batch_size": 16, "optimizer": "adam", "lr": 0.01},
    }


def submit(
    sessions: sessionmaker[Session], body: dict[str, Any], tenant: str = "default", **result: Any
) -> str:
    with sessions() as s:
        job = job_store.create_job(s, body, tenant=tenant, max_attempts=1)
        if result:
            job.result = result
        s.commit()
        return job.id


def test_job_on_an_upload_runs_and_caches_its_preprocessing(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    row = add_upload(settings, sessions, tmp_path)
    first = submit(sessions, spec(row.id))
    assert run_job(first, settings=settings, sessions=sessions, owner="t").status == "succeeded"
    second = submit(sessions, spec(row.id))
    assert run_job(second, settings=settings, sessions=sessions, owner="t").status == "succeeded"
    with sessions() as s:
        jobs = [s.get(Job, first), s.get(Job, second)]
        assert all(j is not None for j in jobs)
        pre = [next(st for st in j.stages if st.name == "preprocess") for j in jobs if j]
        assert not (pre[0].outputs or {}).get("cache", {}).get("hit")
        assert (pre[1].outputs or {})["cache"]["hit"] is True
        done = jobs[1]
        assert done is not None and done.result is not None
        assert done.result["evaluation"]["split"] == "test"
    assert any(settings.cache_dir.rglob("*"))


def test_a_deleted_upload_fails_the_job_in_collect(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    row = add_upload(settings, sessions, tmp_path)
    job_id = submit(sessions, spec(row.id))
    (settings.resolved_uploads_dir / row.path).unlink()
    assert run_job(job_id, settings=settings, sessions=sessions, owner="t").status == "failed"
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.error is not None
        assert job.error["type"] == "DatasetNotFound" and job.error["stage"] == "collect"
        assert f"uploaded dataset 'tiny' (id {row.id})" in job.error["message"]
        assert "POST /datasets" in job.error["hint"]
    # and a row that is gone altogether
    js = JobSpec.model_validate(spec("0" * 32))
    with pytest.raises(TrainingError) as err:
        job_data(sessions, js, "default", None, settings)
    assert err.value.type == "DatasetNotFound"


def failed_error(
    settings: Settings, sessions: sessionmaker[Session], job_id: str
) -> dict[str, Any]:
    assert run_job(job_id, settings=settings, sessions=sessions, owner="t").status == "failed"
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.error is not None
        return dict(job.error)


def assert_names_the_upload_not_its_file(error: dict[str, Any], row: Dataset) -> None:
    """The submitter reads the upload's name and id, nothing of where its file is stored."""
    text = f"{error['message']} {error['hint']}"
    assert f"uploaded dataset 'tiny' (id {row.id}) cannot be read: " in error["message"], error
    assert error["message"].endswith("; upload it again"), error
    assert "POST /datasets" in error["hint"]
    for leak in ("TAS_", "tenants/", "team-a", "datasets/", row.sha256, "tiny.csv"):
        assert leak not in text, (leak, error)
    assert "/" not in error["message"], error  # no path of any kind


def test_an_upload_whose_file_is_gone_or_changed_fails_naming_the_upload(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """A file deleted before the run fails collect; one changed on disk fails its re-read; one
    gone by the time the loader opens it (after collect's check) fails as the OSError says, by
    its strerror alone. Each names the upload as its tenant knows it."""
    row = add_upload(settings, sessions, tmp_path, tenant="team-a")
    stored = settings.resolved_uploads_dir / row.path
    assert row.path.startswith("tenants/team-a/datasets/")

    stored.write_bytes(CSV.replace(b"label", b"lab3l"))
    error = failed_error(settings, sessions, submit(sessions, spec(row.id), "team-a"))
    assert_names_the_upload_not_its_file(error, row)
    assert error["type"] == "DataError" and error["stage"] == "collect"
    assert "column 'label' not found" in error["message"]

    stored.unlink()
    error = failed_error(settings, sessions, submit(sessions, spec(row.id), "team-a"))
    assert_names_the_upload_not_its_file(error, row)
    assert (error["type"], error["stage"]) == ("DatasetNotFound", "collect")
    assert "its file is missing" in error["message"]

    js = JobSpec.model_validate(spec(row.id))
    stored.write_bytes(CSV)
    data = job_data(sessions, js, "team-a", None, settings)
    stored.unlink()
    with pytest.raises(DataError) as err:
        data.source.load(LoadContext(settings.resolved_datasets_dir))
    assert_names_the_upload_not_its_file(err.value.to_error_dict(), row)
    assert ": no such file or directory; " in err.value.message
    # the server's log keeps the whole of it: the OSError, with the file it failed on
    assert isinstance(err.value.__cause__, FileNotFoundError)
    assert err.value.__cause__.filename == str(stored)


def test_a_reader_message_quoting_the_stored_path_says_the_file_instead(
    settings: Settings,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    row = add_upload(settings, sessions, tmp_path, tenant="team-a")
    stored = settings.resolved_uploads_dir / row.path

    def quoting(path: Path, *args: Any) -> Any:
        raise UploadError(f"the CSV cannot be read: {path} and {row.path} are odd")

    monkeypatch.setattr("tas.core.data.formats.upload.read_upload", quoting)
    js = JobSpec.model_validate(spec(row.id))
    with pytest.raises(DataError) as err:
        job_data(sessions, js, "team-a", None, settings).source.load(
            LoadContext(settings.resolved_datasets_dir)
        )
    assert_names_the_upload_not_its_file(err.value.to_error_dict(), row)
    assert "the CSV cannot be read: the file and the file are odd" in err.value.message
    assert str(stored) in str(err.value.__cause__)


def test_an_init_from_version_deleted_after_submit_fails_in_collect(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s:
        base = Job(name="base", spec={"name": "base"}, status=JobStatus.succeeded.value)
        s.add(base)
        s.flush()
        model_dir = settings.resolved_artifact_dir / "jobs" / base.id / "model"
        model_dir.mkdir(parents=True)
        model = build_model(ModelSpec(arch="mlp", hidden=[8]), (4,), 3)
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(model_dir / "model.safetensors"),
        )
        s.add(
            ModelVersion(name="base", version=1, job_id=base.id, model_dir=str(model_dir), card={})
        )
        s.commit()
        base_id = base.id
    pinned = {"ref": "base", "kind": "model", "name": "base", "version": 1, "job_id": base_id}
    body = {
        "name": "ft",
        "dataset": {"name": "iris"},
        "model": {"arch": "mlp", "hidden": [8], "init_from": "base"},
    }
    js = JobSpec.model_validate(body)
    assert job_data(sessions, js, "default", pinned, settings).init_weights == (
        model_dir / "model.safetensors"
    )
    with sessions() as s:
        registry_store.delete_version(s, "base", 1, tenant="default")
        s.commit()
    job_id = submit(sessions, body, init_from=pinned)
    assert run_job(job_id, settings=settings, sessions=sessions, owner="t").status == "failed"
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.error is not None
        assert job.error["type"] == "InitSourceNotFound" and job.error["stage"] == "collect"
        assert "base:1" in job.error["message"] and "deleted" in job.error["message"]
