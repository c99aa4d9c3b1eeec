"""GET /jobs/{id}/logs: a job's lines in order from a cursor, as JSON or plain text, bounded per
call, and only the tenant's own jobs (another tenant's job is a 404, like one that does not exist)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tas.settings import Settings
from tas.store import logs as log_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.logs import LogLine
from tests.helpers.specs import iris_spec
from tests.unit.app.api.test_authorization import make_key


def add_lines(settings: Settings, job_id: str, lines: list[LogLine]) -> None:
    engine = make_engine(settings.resolved_database_url)
    try:
        with make_sessionmaker(engine)() as s:
            log_store.append_logs(s, job_id, lines, max_lines=10_000, max_line_bytes=8192)
            s.commit()
    finally:
        engine.dispose()


def submit(client: TestClient, headers: dict[str, str] | None = None) -> str:
    r = client.post("/jobs", json=iris_spec(), headers=headers or {})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_lines_page_from_the_cursor(client: TestClient, settings: Settings) -> None:
    job_id = submit(client)
    empty = client.get(f"/jobs/{job_id}/logs")
    assert empty.status_code == 200, empty.text
    assert empty.json() == {"items": [], "next_after": None}

    add_lines(
        settings,
        job_id,
        [LogLine(f"line {i}", attempt=1, worker="host/1/ab", source="stage") for i in range(5)],
    )
    first = client.get(f"/jobs/{job_id}/logs", params={"limit": 2}).json()
    assert [line["message"] for line in first["items"]] == ["line 0", "line 1"]
    assert first["items"][0].keys() == {
        "id",
        "created_at",
        "attempt",
        "worker",
        "level",
        "source",
        "message",
    }
    assert (first["items"][0]["attempt"], first["items"][0]["worker"]) == (1, "host/1/ab")
    assert first["next_after"] == first["items"][-1]["id"]
    rest = client.get(f"/jobs/{job_id}/logs", params={"after": first["next_after"]}).json()
    assert [line["message"] for line in rest["items"]] == ["line 2", "line 3", "line 4"]
    # Nothing new: the same cursor comes back, so a follower can keep polling with it.
    idle = client.get(f"/jobs/{job_id}/logs", params={"after": rest["next_after"]}).json()
    assert idle == {"items": [], "next_after": rest["next_after"]}


def test_text_format(client: TestClient, settings: Settings) -> None:
    job_id = submit(client)
    add_lines(
        settings,
        job_id,
        [
            LogLine("stage train started", attempt=2, worker="w", source="stage"),
            LogLine(
                "failed\nTraceback (most recent call last):\nValueError: x", "error", attempt=2
            ),
        ],
    )
    r = client.get(f"/jobs/{job_id}/logs", params={"format": "text"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert len(lines) == 4
    assert lines[0].endswith("INFO    stage  [run 2 w] stage train started")
    assert "ERROR   worker [run 2]" in lines[1]
    assert lines[2:] == ["    Traceback (most recent call last):", "    ValueError: x"]
    last_id = client.get(f"/jobs/{job_id}/logs").json()["next_after"]
    assert r.headers["x-next-after"] == str(last_id)


def test_bounds_are_422s_naming_the_parameter(client: TestClient) -> None:
    job_id = submit(client)
    for params, name in (
        ({"limit": 1001}, "limit"),
        ({"limit": 0}, "limit"),
        ({"after": -1}, "after"),
        ({"after": "x"}, "after"),
        ({"format": "xml"}, "format"),
        ({"since": 3}, "since"),  # unknown parameters are refused, with the allowed ones
    ):
        r = client.get(f"/jobs/{job_id}/logs", params=params)
        assert r.status_code == 422, (params, r.text)
        assert name in r.text, (params, r.text)


def test_another_tenants_job_is_not_found(client: TestClient, settings: Settings) -> None:
    _, a = make_key(settings, "team-a", ["jobs:read", "jobs:write"])
    _, b = make_key(settings, "team-b", ["jobs:read", "jobs:write"])
    job_id = submit(client, {"Authorization": f"Bearer {a}"})
    add_lines(settings, job_id, [LogLine("team a's secret line")])
    mine = client.get(f"/jobs/{job_id}/logs", headers={"Authorization": f"Bearer {a}"})
    assert [line["message"] for line in mine.json()["items"]] == ["team a's secret line"]
    for fmt in ("json", "text"):
        theirs = client.get(
            f"/jobs/{job_id}/logs",
            params={"format": fmt},
            headers={"Authorization": f"Bearer {b}"},
        )
        nothing = client.get(
            f"/jobs/{'0' * 32}/logs",
            params={"format": fmt},
            headers={"Authorization": f"Bearer {b}"},
        )
        assert theirs.status_code == 404 and nothing.status_code == 404
        assert "secret" not in theirs.text
        assert theirs.text.replace(job_id, "0" * 32) == nothing.text
