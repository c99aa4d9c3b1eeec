"""`client.jobs.predictions` walks the pages of GET /jobs/{id}/predictions by their `Link` header,
so a caller gets every row of a split however many there are, a page at a time."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tas.client import ApiError
from tests.unit.tas.client.test_client import Server, make


def page(rows: list[int], link: str | None) -> httpx.Response:
    body: dict[str, Any] = {
        "split": "test",
        "count": 5,
        "predictions": [{"index": i} for i in rows],
    }
    return httpx.Response(200, json=body, headers={"link": link} if link else {})


def test_predictions_follow_the_link_to_every_page() -> None:
    nxt = "/jobs/j1/predictions?split=test&limit=2&offset={}"
    server = Server(
        {
            "/jobs/j1/predictions": [
                page([4, 0], f'<{nxt.format(2)}>; rel="next"'),
                page([3, 1], f'<{nxt.format(4)}>; rel="next"'),
                page([2], None),
            ]
        }
    )
    rows = make(server, []).jobs.predictions("j1", split="test", page_size=2)
    assert [r["index"] for r in rows] == [4, 0, 3, 1, 2]
    first, *rest = server.requests
    assert dict(first.url.params) == {"limit": "2", "split": "test"}
    assert [dict(r.url.params)["offset"] for r in rest] == ["2", "4"]
    assert all(dict(r.url.params)["limit"] == "2" for r in rest)


def test_predictions_of_an_unfinished_job_are_an_api_error() -> None:
    refused = httpx.Response(
        409, json={"detail": "job j1 is running: predictions once it has succeeded"}
    )
    server = Server({"/jobs/j1/predictions": [refused]})
    with pytest.raises(ApiError) as info:
        list(make(server, []).jobs.predictions("j1"))
    assert info.value.status == 409 and dict(server.requests[0].url.params) == {"limit": "1000"}
