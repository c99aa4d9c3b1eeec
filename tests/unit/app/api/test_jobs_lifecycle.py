"""Resume, clone, delete, tags and list filters, in process: every route and every refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tas.settings import Settings
from tas.store.orm import Checkpoint, Job, JobStage, MetricRow, ModelVersion
from tests.helpers.api import RecordingPublisher
from tests.helpers.specs import iris_spec


def submit(client: TestClient, **parts: Any) -> dict[str, Any]:
    r = client.post("/jobs", json=iris_spec(**parts))
    assert r.status_code == 201, r.text
    return dict(r.json())


def db(client: TestClient) -> Session:
    session: Session = client.app.state.sessions()  # type: ignore[attr-defined]
    return session


def set_job(client: TestClient, job_id: str, **values: Any) -> None:
    with db(client) as s:
        job = s.get(Job, job_id)
        assert job is not None
        for key, value in values.items():
            setattr(job, key, value)
        s.commit()


def failed(client: TestClient, job_id: str, error_type: str = "NonFiniteLoss") -> None:
    """The state a worker leaves behind when a job fails on its last attempt."""
    set_job(
        client,
        job_id,
        status="failed",
        stage="train",
        attempts=3,
        claims=4,
        preemptions=1,
        attempt_log=[{"run": 1, "outcome": "preempted"}, {"run": 2, "outcome": "failed"}],
        error={"type": error_type, "message": "boom", "hint": None, "stage": "train"},
        lease_owner="w1",
        finished_at=datetime.now(UTC),
    )


def detail_at(r: Any, loc: list[Any]) -> str:
    assert r.status_code == 422, r.text
    msgs = [d["msg"] for d in r.json()["detail"] if d["loc"][: len(loc)] == loc]
    assert msgs, r.json()
    return " ".join(msgs)


# --- tags ------------------------------------------------------------------------------------


def test_tags_are_kept_on_the_job_and_patch_merges_them(client: TestClient) -> None:
    job = submit(client, tags={"team": "vision", "owner": "ana"})
    assert job["tags"] == {"team": "vision", "owner": "ana"}
    assert "tags" not in job["spec"]  # labels, not training input
    set_job(client, job["id"], status="running")  # any state
    r = client.patch(f"/jobs/{job['id']}", json={"tags": {"owner": None, "stage": "prod"}})
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == {"team": "vision", "stage": "prod"}
    assert client.get(f"/jobs/{job['id']}").json()["tags"] == {"team": "vision", "stage": "prod"}
    # a job submitted without tags has an empty dict, not null
    assert submit(client)["tags"] == {}


@pytest.mark.parametrize(
    ("tags", "loc", "says"),
    [
        ({"bad key": "x"}, ["body", "tags", "bad key"], "pattern"),
        ({"x:y": "x"}, ["body", "tags", "x:y"], "pattern"),
        ({"k" * 65: "x"}, ["body", "tags"], "pattern"),
        ({"ok": "v" * 257}, ["body", "tags", "ok"], "256"),
        ({"ok": 5}, ["body", "tags", "ok"], "string"),
        ({f"k{i}": "v" for i in range(33)}, ["body", "tags"], "at most 32"),
    ],
    ids=["space", "colon", "long-key", "long-value", "not-a-string", "too-many"],
)
def test_bad_tags_are_422_naming_them(
    client: TestClient, tags: dict[str, Any], loc: list[Any], says: str
) -> None:
    body = iris_spec(tags=tags)
    assert says in detail_at(client.post("/jobs", json=body), loc)
    job = submit(client)
    assert says in detail_at(client.patch(f"/jobs/{job['id']}", json={"tags": tags}), loc)


def test_patch_refusals(client: TestClient) -> None:
    job = submit(client, tags={f"k{i}": "v" for i in range(32)})
    # 32 is the limit: one more after the merge is refused, a swap is not
    r = client.patch(f"/jobs/{job['id']}", json={"tags": {"one": "more"}})
    assert "at most 32" in detail_at(r, ["body", "tags"])
    r = client.patch(f"/jobs/{job['id']}", json={"tags": {"k0": None, "one": "more"}})
    assert r.status_code == 200 and len(r.json()["tags"]) == 32
    assert client.patch(f"/jobs/{job['id']}", json={"name": "x"}).status_code == 422
    assert client.patch(f"/jobs/{job['id']}", json={}).status_code == 422
    assert client.patch("/jobs/nope", json={"tags": {}}).status_code == 404


# --- list filters ----------------------------------------------------------------------------


def ids(client: TestClient, **params: Any) -> list[str]:
    r = client.get("/jobs", params=params)
    assert r.status_code == 200, r.text
    return [j["id"] for j in r.json()["items"]]


def test_list_filters_by_name_status_time_and_tags(client: TestClient) -> None:
    a = submit(client, name="bc-mlp", tags={"team": "vision", "env": "dev"})["id"]
    b = submit(client, name="bc-mlp-2", tags={"team": "vision", "env": "prod"})["id"]
    c = submit(client, name="BC-mlp", tags={"team": "nlp"})["id"]
    d = submit(client, name="bcxmlp")["id"]  # `_`/`%` are not wildcards: see below
    e = submit(client, name="b_-x")["id"]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i, job_id in enumerate([a, b, c, d, e]):
        set_job(client, job_id, created_at=base + timedelta(hours=i))
    client.post(f"/jobs/{b}/cancel")

    assert ids(client, name="bc-mlp") == [b, a]  # prefix, case-sensitive, newest first
    assert ids(client, name="b_") == [e]  # `_` is literal, not LIKE's any-character
    assert ids(client, status="cancelled") == [b]
    assert ids(client, status=["cancelled", "queued"], name="bc") == [d, b, a]
    assert ids(client, status="queued,cancelled", name="bc-") == [b, a]
    # after inclusive, before exclusive; a time without a zone is UTC
    window = {"created_after": "2026-01-01T01:00:00Z", "created_before": "2026-01-01T03:00:00"}
    assert ids(client, **window) == [c, b]
    assert ids(client, created_after="2026-01-01T02:00:00+01:00") == [e, d, c, b]
    assert ids(client, tag="team:vision") == [b, a]
    assert ids(client, tag=["team:vision", "env:prod"]) == [b]
    assert ids(client, tag=["team:vision", "env:staging"]) == []
    assert ids(client, tag="team:nlp", name="bc") == []
    # the filter runs before paging: one per page, no gaps, no strays
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"tag": "team:vision", "limit": 1}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [b, a]


def test_tag_values_with_colons_and_after_patch(client: TestClient) -> None:
    job = submit(client, tags={"url": "http://x:8080/a"})["id"]
    assert ids(client, tag="url:http://x:8080/a") == [job]  # split at the first colon
    client.patch(f"/jobs/{job}", json={"tags": {"url": None, "team": "vision"}})
    assert ids(client, tag="url:http://x:8080/a") == []
    assert ids(client, tag="team:vision") == [job]


@pytest.mark.parametrize(
    ("params", "loc", "says"),
    [
        ({"nmae": "x"}, ["query", "nmae"], "did you mean 'name'"),
        ({"x": "1"}, ["query", "x"], "allowed: created_after, created_before, cursor, limit"),
        ({"status": "done"}, ["query", "status"], "allowed: queued, running, succeeded"),
        ({"status": "queued,nope"}, ["query", "status"], "'nope'"),
        ({"tag": "team"}, ["query", "tag"], "key:value"),
        ({"tag": "bad key:x"}, ["query", "tag"], "key:value"),
        ({"created_after": "yesterday"}, ["query", "created_after"], "datetime"),
        (
            {"created_after": "2026-02-01T00:00:00Z", "created_before": "2026-01-01T00:00:00Z"},
            ["query", "created_before"],
            "later than created_after",
        ),
        ({"name": "n" * 65}, ["query", "name"], "64"),
    ],
    ids=["typo", "unknown", "status", "status-list", "tag", "tag-key", "date", "range", "long"],
)
def test_bad_list_queries_are_422_naming_the_parameter(
    client: TestClient, params: dict[str, Any], loc: list[Any], says: str
) -> None:
    assert says in detail_at(client.get("/jobs", params=params), loc)


def test_unknown_query_parameters_are_refused_on_other_lists_too(client: TestClient) -> None:
    r = client.get("/datasets", params={"lmit": 5})
    assert "did you mean 'limit'" in detail_at(r, ["query", "lmit"])
    r = client.get("/models", params={"name": "x"})
    assert "allowed: cursor, limit" in detail_at(r, ["query", "name"])  # /models pages
    assert client.get("/datasets", params={"limit": 5}).status_code == 200


# --- resume ----------------------------------------------------------------------------------


def test_resume_a_failed_job_with_a_fresh_attempt_budget(
    client: TestClient, published: RecordingPublisher
) -> None:
    job = submit(client)
    failed(client, job["id"])
    published.published.clear()
    r = client.post(f"/jobs/{job['id']}/resume")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "queued" and out["attempts"] == 0 and out["max_attempts"] == 3
    assert out["error"] is None and out["finished_at"] is None and out["stage"] is None
    assert published.published == [(job["id"], job["queue"])]
    with db(client) as s:
        row = s.get(Job, job["id"])
        assert row is not None
        # the history stays: the fencing token keeps rising, preemptions and the log are kept
        assert (row.claims, row.preemptions, len(row.attempt_log or [])) == (4, 1, 2)
        assert row.lease_owner is None and row.cancel_requested is False
    # once queued again it cannot be resumed twice
    again = client.post(f"/jobs/{job['id']}/resume")
    assert again.status_code == 409 and "already waiting" in again.json()["detail"]
    assert len(published.published) == 1


def test_resume_a_cancelled_job_clears_the_cancel(client: TestClient) -> None:
    job = submit(client)
    assert client.post(f"/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    out = client.post(f"/jobs/{job['id']}/resume").json()
    assert out["status"] == "queued" and out["cancel_requested"] is False


@pytest.mark.parametrize(
    ("status", "says"),
    [
        ("queued", "already waiting for a worker"),
        ("running", "POST /jobs/{id}/cancel stops it"),
        ("succeeded", "POST /jobs/{id}/clone"),
    ],
)
def test_resume_refuses_jobs_that_are_not_failed_or_cancelled(
    client: TestClient, published: RecordingPublisher, status: str, says: str
) -> None:
    job = submit(client)
    set_job(client, job["id"], status=status)
    published.published.clear()
    r = client.post(f"/jobs/{job['id']}/resume")
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert "only a failed or cancelled job can be resumed" in detail
    assert says.replace("{id}", job["id"]) in detail
    assert published.published == []
    assert client.post("/jobs/nope/resume").status_code == 404


def test_resume_a_time_limited_job_needs_a_larger_limit(client: TestClient) -> None:
    job = submit(client, training={"max_minutes": 2})
    failed(client, job["id"], error_type="TimeLimitExceeded")
    url = f"/jobs/{job['id']}/resume"
    assert "larger one" in detail_at(client.post(url), ["body", "max_minutes"])
    assert "4" in detail_at(client.post(url, json={"max_minutes": 2}), ["body", "max_minutes"])
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "failed"
    out = client.post(url, json={"max_minutes": 5}).json()
    assert out["status"] == "queued" and out["spec"]["training"]["max_minutes"] == 5


def test_resume_body_refusals(client: TestClient) -> None:
    job = submit(client)
    failed(client, job["id"])
    url = f"/jobs/{job['id']}/resume"
    assert "clone" in detail_at(client.post(url, json={"epochs": 20}), ["body", "epochs"])
    assert client.post(url, json={"max_minutes": 0}).status_code == 422
    assert client.post(url, json={"lr": 0.1}).status_code == 422
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "failed"
    # max_minutes may change on any resumable job (the checkpoint does not depend on it)
    out = client.post(url, json={"max_minutes": 90}).json()
    assert out["spec"]["training"]["max_minutes"] == 90


# --- clone -----------------------------------------------------------------------------------


def test_clone_submits_the_spec_with_overrides_merged(
    client: TestClient, published: RecordingPublisher
) -> None:
    job = submit(client, name="orig", tags={"team": "vision"}, training={"lr": 0.02})
    client.patch(f"/jobs/{job['id']}", json={"tags": {"round": "2"}})
    published.published.clear()

    r = client.post(f"/jobs/{job['id']}/clone")
    assert r.status_code == 201, r.text
    same = r.json()
    assert r.headers["location"] == f"/jobs/{same['id']}" and same["id"] != job["id"]
    assert same["spec"] == job["spec"] and same["status"] == "queued"
    assert same["tags"] == {"team": "vision", "round": "2"}  # the job's tags as they are now

    r = client.post(
        f"/jobs/{job['id']}/clone",
        json={"name": "orig-lr", "training": {"lr": 0.1}, "tags": {"round": "3"}},
    )
    assert r.status_code == 201, r.text
    changed = r.json()
    assert changed["name"] == "orig-lr"
    assert changed["spec"]["training"] == {**job["spec"]["training"], "lr": 0.1}
    assert changed["spec"]["model"] == job["spec"]["model"]
    assert changed["tags"] == {"team": "vision", "round": "3"}
    assert published.published == [(same["id"], same["queue"]), (changed["id"], changed["queue"])]


@pytest.mark.parametrize(
    ("overrides", "loc", "says"),
    [
        ({"training": {"lr": -1}}, ["body", "training", "lr"], "greater than 0"),
        ({"training": {"epoch": 3}}, ["body", "training", "epoch"], ""),
        ({"model": {"arch": "cnn"}}, ["body", "model", "arch"], ""),
        ({"dataset": {"id": "abc"}}, ["body", "dataset"], "exactly one"),
        ({"tags": {"bad key": "x"}}, ["body", "tags", "bad key"], ""),
    ],
    ids=["lr", "unknown", "cnn-on-tabular", "dataset", "tag"],
)
def test_clone_overrides_are_checked_like_a_submit(
    client: TestClient,
    published: RecordingPublisher,
    overrides: dict[str, Any],
    loc: list[Any],
    says: str,
) -> None:
    job = submit(client)
    published.published.clear()
    r = client.post(f"/jobs/{job['id']}/clone", json=overrides)
    assert says in detail_at(r, loc)
    assert published.published == []
    assert len(client.get("/jobs").json()["items"]) == 1


def test_clone_of_an_unknown_job_is_404(client: TestClient) -> None:
    assert client.post("/jobs/nope/clone").status_code == 404


# --- delete ----------------------------------------------------------------------------------


def with_rows(client: TestClient, job_id: str, settings: Settings) -> Path:
    """Metrics, a stage, a checkpoint and files, as a run leaves them."""
    job_dir = settings.resolved_artifact_dir / "jobs" / job_id
    (job_dir / "checkpoints").mkdir(parents=True)
    (job_dir / "checkpoints" / "e1.safetensors").write_bytes(b"x")
    with db(client) as s:
        s.add(MetricRow(job_id=job_id, epoch=1, values={"train_loss": 1.0}))
        s.add(JobStage(job_id=job_id, attempt=1, name="train", status="cancelled"))
        s.add(Checkpoint(job_id=job_id, attempt=1, epoch=1, path=str(job_dir / "c")))
        s.commit()
    return job_dir


def count(client: TestClient, model: Any, job_id: str) -> int:
    with db(client) as s:
        return int(s.scalar(select(func.count()).where(model.job_id == job_id)) or 0)


def test_delete_a_finished_job_removes_its_rows_and_files(
    client: TestClient, settings: Settings
) -> None:
    keep = submit(client, name="keep")["id"]
    job = submit(client)["id"]
    job_dir = with_rows(client, job, settings)
    keep_dir = with_rows(client, keep, settings)
    client.post(f"/jobs/{job}/cancel")
    r = client.delete(f"/jobs/{job}")
    assert r.status_code == 204, r.text
    assert client.get(f"/jobs/{job}").status_code == 404
    assert [count(client, m, job) for m in (MetricRow, JobStage, Checkpoint)] == [0, 0, 0]
    assert not job_dir.exists()
    # another job is untouched
    assert [count(client, m, keep) for m in (MetricRow, JobStage, Checkpoint)] == [1, 1, 1]
    assert keep_dir.is_dir()
    assert client.delete(f"/jobs/{job}").status_code == 404


@pytest.mark.parametrize("status", ["queued", "running"])
def test_delete_refuses_a_job_that_can_still_run(client: TestClient, status: str) -> None:
    job = submit(client)["id"]
    set_job(client, job, status=status)
    r = client.delete(f"/jobs/{job}")
    assert r.status_code == 409
    assert status in r.json()["detail"] and f"POST /jobs/{job}/cancel" in r.json()["detail"]
    assert client.get(f"/jobs/{job}").status_code == 200


def test_delete_refuses_while_a_model_version_needs_the_files(
    client: TestClient, settings: Settings
) -> None:
    job = submit(client, name="served")["id"]
    job_dir = with_rows(client, job, settings)
    set_job(client, job, status="succeeded")
    with db(client) as s:
        s.add(
            ModelVersion(
                name="served", version=1, job_id=job, model_dir=str(job_dir / "model"), card={}
            )
        )
        s.commit()
    r = client.delete(f"/jobs/{job}")
    assert r.status_code == 409
    assert "served:1" in r.json()["detail"]
    assert "DELETE /models/served/versions/1" in r.json()["detail"]
    assert job_dir.is_dir() and count(client, MetricRow, job) == 1
    assert client.delete("/models/served/versions/1").status_code == 204
    assert client.delete(f"/jobs/{job}").status_code == 204
    assert not job_dir.exists()
