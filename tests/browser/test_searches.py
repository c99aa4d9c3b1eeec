"""The search pages in chromium against a real `tas serve` (its API, its controller and its
embedded worker), with the network closed except loopback and the console watched
(tests/browser/conftest.py).

The module runs one small grid search on iris (two learning rates, three epochs a trial, no
pruner), opened in the browser as soon as it is created: the page must follow it live to its
end without a reload, then show both trials, the objective chart and a scatter per parameter,
with links to each trial's job and the registered model; a trial's job page links back."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers.specs import iris_spec
from tests.helpers.stack import Stack

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LRS = [0.01, 0.05]


def search_body() -> dict[str, Any]:
    return {
        "name": "iris-lr-grid",
        "spec": iris_spec(
            name="iris-trial",
            dataset={"val_fraction": 0.2},
            training={"epochs": 3, "seed": 1},
        ),
        "space": {"training.lr": {"type": "categorical", "choices": LRS}},
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "sampler": {"type": "grid", "seed": 1},
        "pruner": {"type": "none"},
        "max_trials": len(LRS),
        "max_concurrent": 1,
        "model_name": "iris-grid-best",
    }


@pytest.fixture(scope="module")
def created(stack: Stack) -> dict[str, Any]:
    r = stack.http.post("/searches", json=search_body())
    assert r.status_code == 201, r.text
    return dict(r.json())


def wait_search(stack: Stack, search_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    search: dict[str, Any] = {}
    while time.monotonic() < deadline:
        search = stack.http.get(f"/searches/{search_id}").json()
        if search["status"] in ("succeeded", "failed", "cancelled"):
            return search
        time.sleep(0.5)
    raise AssertionError(f"search still {search.get('status')} after {timeout}s\n{stack.logs()}")


def test_the_search_page_follows_the_search_live_to_its_trials_and_charts(
    page: Page, stack: Stack, created: dict[str, Any]
) -> None:
    page.goto(f"/ui/searches/{created['id']}")
    page.locator("#trials-table").wait_for()
    assert page.title().startswith("iris-lr-grid")
    # Opened while the search was queued or running: it must reach its end without a reload.
    page.wait_for_function(
        "document.getElementById('search-status')?.dataset.status === 'succeeded'",
        timeout=240_000,
    )
    done = wait_search(stack, created["id"], timeout=10)
    assert done["status"] == "succeeded", done
    trials = sorted(done["trials"], key=lambda t: t["number"])
    assert len(trials) == len(LRS)

    rows = page.locator("#trials-table tbody tr")
    assert rows.count() == len(LRS)
    for trial in trials:
        row = page.locator(f'#trials-table tr[data-trial="{trial["number"]}"]')
        assert row.get_attribute("data-state") == trial["state"] == "complete"
        link = row.locator('[data-testid="trial-job"]')
        assert link.get_attribute("href") == f"/ui/jobs/{trial['job_id']}"
    shown_lrs = sorted(
        float(page.locator(f'#trials-table tr[data-trial="{t["number"]}"] td.mono').inner_text())
        for t in trials
    )
    assert shown_lrs == LRS

    assert page.get_attribute("#chart-objective", "data-points") == str(len(LRS))
    assert page.get_attribute("#chart-objective", "data-pruned") == "0"
    assert page.locator("#chart-objective canvas").count() >= 1  # uPlot drew it
    scatter = page.locator('[data-param="training.lr"].search-param-chart')
    assert scatter.get_attribute("data-points") == str(len(LRS))

    best = done["best"]
    assert page.get_attribute("#search-best", "data-trial") == str(best["number"])
    assert page.get_attribute("#search-best-job", "href") == f"/ui/jobs/{best['job_id']}"
    assert done["model"] is not None
    model = page.locator("a#search-model")
    assert model.get_attribute("href") == f"/ui/models/{done['model']['name']}"
    assert f"v{done['model']['version']}" in model.inner_text()


def test_the_list_links_to_the_search_and_a_trial_links_back(
    page: Page, stack: Stack, created: dict[str, Any]
) -> None:
    done = wait_search(stack, created["id"])
    page.goto("/ui/jobs")
    page.locator('nav a[href="/ui/searches"]').click()
    page.wait_for_url("**/ui/searches")
    assert page.locator('nav a[aria-current="page"]').inner_text() == "Searches"
    row = page.locator(f'#searches-table tr[data-search-id="{created["id"]}"]')
    row.wait_for()
    assert row.locator('[data-testid="status"]').inner_text().strip() == "succeeded"
    assert f"{len(LRS)} / {len(LRS)}" in row.inner_text()
    row.locator(f'a[href="/ui/searches/{created["id"]}"]').click()
    page.wait_for_url(f"**/ui/searches/{created['id']}")
    page.locator("#trials-table tbody tr").first.wait_for()

    trial = done["trials"][0]
    page.goto(f"/ui/jobs/{trial['job_id']}")
    back = page.locator("a#job-search")
    back.wait_for()
    assert back.get_attribute("href") == f"/ui/searches/{created['id']}"
    assert f"trial {trial['number']}" in back.inner_text()
