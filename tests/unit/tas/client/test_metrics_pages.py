"""`client.jobs.metrics` returns every row: the API answers at most 10,000 rows a request and names
the next page in a `Link` header, which the client follows instead of stopping at the first."""

from __future__ import annotations

import httpx

from tests.unit.tas.client.test_client import Server, make


def page(epochs: list[int], link: str | None) -> httpx.Response:
    body = [{"epoch": e, "step": None, "loss": 1.0 / e} for e in epochs]
    return httpx.Response(200, json=body, headers={"link": link} if link else {})


def test_metrics_follow_the_link_to_every_page() -> None:
    nxt = "/jobs/j1/metrics?kind=epoch&limit=2&offset={}&keys=loss"
    server = Server(
        {
            "/jobs/j1/metrics": [
                page([1, 2], f'<{nxt.format(2)}>; rel="next"'),
                page([3, 4], f'<{nxt.format(4)}>; rel="next"'),
                page([5], None),
            ]
        }
    )
    rows = make(server, []).jobs.metrics("j1", keys=["loss"])
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    first, *rest = server.requests
    assert dict(first.url.params) == {"keys": "loss"}
    # the link's own query is sent as it is, not merged with the first request's
    assert [dict(r.url.params) for r in rest] == [
        {"kind": "epoch", "limit": "2", "offset": "2", "keys": "loss"},
        {"kind": "epoch", "limit": "2", "offset": "4", "keys": "loss"},
    ]


def test_downsampled_points_are_one_answer() -> None:
    server = Server({"/jobs/j1/metrics": [page([1, 5], None)]})
    rows = make(server, []).jobs.metrics("j1", max_points=2)
    assert [r["epoch"] for r in rows] == [1, 5]
    assert [dict(r.url.params) for r in server.requests] == [{"max_points": "2"}]
