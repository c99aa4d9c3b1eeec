"""The dashboard's pages in chromium against one real `tas serve` (open: no key exists), with the
network closed except loopback and the console watched (tests/browser/conftest.py).

The module's jobs are tiny: two finished iris runs (three classes, different learning rates)
that the jobs, compare and confusion-matrix tests read, and one long digits run that the live
test watches grow and then cancels from its page."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers.browser import PHONE, guarded_page
from tests.helpers.specs import digits_mlp_spec, iris_spec
from tests.helpers.stack import Stack

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from tests.helpers.browser import Guard

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Iris has three classes: its confusion matrix is 3 x 3.
IRIS_CLASSES = 3


@pytest.fixture(scope="module")
def submitted(stack: Stack) -> dict[str, Any]:
    """All the module's jobs, submitted at once so the embedded worker (one job at a time) trains
    them while the first tests run: two iris runs that differ in their learning rate (what the
    compare page's spec diff shows), then a long digits run (a step row every 5 steps) that is
    still training when the live test, the module's last, watches and cancels it."""
    iris = [
        stack.submit(
            iris_spec(
                name=f"iris-lr{lr}",
                model_name="iris-mlp",
                training={"epochs": 3, "lr": lr, "seed": 1},
            )
        )
        for lr in (0.01, 0.05)
    ]
    live = digits_mlp_spec("live", epochs=5000, log_every_steps=5)
    live["model"]["hidden"] = [32]
    return {"iris": iris, "live": stack.submit(live)}


@pytest.fixture(scope="module")
def trained(stack: Stack, submitted: dict[str, Any]) -> list[dict[str, Any]]:
    """The two iris jobs, finished."""
    done = [stack.wait(j["id"], timeout=180) for j in submitted["iris"]]
    assert [j["status"] for j in done] == ["succeeded", "succeeded"], stack.logs()
    return done


@pytest.mark.usefixtures("submitted")  # the jobs start training meanwhile
def test_the_guard_blocks_and_records_what_leaves_loopback(page: Page, guard: Guard) -> None:
    """The harness itself: a request to another host never leaves, and is recorded; a console
    error is recorded (both would fail any other test)."""
    page.goto("/ui/signin")
    page.evaluate("fetch('http://example.com/x').catch(() => null)")
    page.evaluate("console.error('provoked')")
    deadline = time.monotonic() + 10
    while not (guard.outside and guard.errors) and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert guard.outside == ["http://example.com/x"]
    assert any("provoked" in e for e in guard.errors)
    guard.outside.clear()
    guard.errors.clear()


def points(page: Page, selector: str) -> int:
    value = page.get_attribute(selector, "data-points")
    return int(value) if value else 0


def wait_points(page: Page, selector: str, above: int, timeout: float) -> int:
    """Wait (without reloading) until the chart at `selector` draws more than `above` points."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.locator(selector).count() and (n := points(page, selector)) > above:
            return n
        page.wait_for_timeout(250)
    raise AssertionError(f"{selector} stayed at {points(page, selector)} points for {timeout}s")


def test_the_jobs_page_lists_submitted_jobs(
    page: Page, submitted: dict[str, Any], trained: list[dict[str, Any]]
) -> None:
    page.goto("/ui/jobs")
    live = page.locator(f'#jobs-table [data-job-id="{submitted["live"]["id"]}"]')
    live.wait_for()
    assert live.locator('[data-testid="status"]').inner_text().strip() in ("queued", "running")
    for job in trained:
        row = page.locator(f'#jobs-table [data-job-id="{job["id"]}"]')
        row.wait_for()
        assert row.locator('[data-testid="status"]').inner_text().strip() == "succeeded"
        assert job["name"] in row.inner_text()
    row.locator(f'a[href="/ui/jobs/{job["id"]}"]').first.click()
    page.wait_for_url(f"**/ui/jobs/{job['id']}")


def test_the_compare_page_overlays_two_jobs(page: Page, trained: list[dict[str, Any]]) -> None:
    page.goto("/ui/compare?ids=" + ",".join(j["id"] for j in trained))
    charts = page.locator('[data-testid="compare-chart"]')
    charts.first.wait_for()
    assert charts.count() >= 1
    for i in range(charts.count()):
        assert charts.nth(i).get_attribute("data-series") == "2"
    diff = page.locator("#spec-diff")
    assert "lr" in diff.inner_text()
    assert "0.01" in diff.inner_text()
    assert "0.05" in diff.inner_text()


def test_the_submit_page_shows_the_422_next_to_the_field(
    page: Page, guard: Guard, stack: Stack
) -> None:
    guard.expect_error(r"status of 422")  # the answer the test asks for
    page.goto("/ui/submit")
    page.fill("#spec", json.dumps(iris_spec(name="negative-lr", training={"lr": -1})))
    page.click("#submit-job")
    error = page.locator('[data-testid="field-error"][data-loc="training.lr"]')
    error.wait_for()
    assert "greater than" in error.inner_text()
    assert stack.http.get("/jobs", params={"name": "negative-lr"}).json()["items"] == []


def test_the_confusion_matrix_has_classes_squared_cells(
    page: Page, trained: list[dict[str, Any]]
) -> None:
    page.goto(f"/ui/jobs/{trained[0]['id']}")
    cells = page.locator('#confusion [data-testid="cm-cell"]')
    cells.first.wait_for()
    assert cells.count() == IRIS_CLASSES**2


def test_an_alias_moves_from_the_model_page(
    page: Page, stack: Stack, trained: list[dict[str, Any]]
) -> None:
    """Both iris runs registered a version of iris-mlp; the model page's form points an alias
    at the first, and the API agrees."""
    page.goto("/ui/models")
    page.locator('#models-table [data-model="iris-mlp"] a').click()
    page.wait_for_url("**/ui/models/iris-mlp")
    page.locator("#versions-table tbody tr").nth(1).wait_for()
    page.fill("#alias-input", "production")
    page.fill("#version-input", "1")
    page.locator("#alias-form button[type=submit]").click()
    page.wait_for_function(
        "document.querySelector('#alias-status')?.textContent.includes('iris-mlp@production')"
    )
    assert stack.http.get("/models/iris-mlp").json()["aliases"] == {"production": 1}


def test_a_csv_uploads_from_the_datasets_page(page: Page, stack: Stack) -> None:
    rows = "\n".join(f"{i % 7},{i % 5},{'big' if i % 7 > 3 else 'small'}" for i in range(40))
    page.goto("/ui/datasets")
    page.locator('#datasets-table [data-builtin="true"]').first.wait_for()
    page.set_input_files(
        "#upload-file",
        files=[
            {"name": "sizes.csv", "mimeType": "text/csv", "buffer": f"w,h,size\n{rows}\n".encode()}
        ],
    )
    page.fill("#upload-target", "size")
    page.locator("#upload-form button[type=submit]").click()
    page.wait_for_function(
        "document.querySelector('#upload-status')?.textContent.startsWith('Uploaded sizes:')"
    )
    assert "2 classes" in page.inner_text("#upload-status")
    uploaded = [d for d in stack.http.get("/datasets").json()["items"] if not d["builtin"]]
    assert [d["name"] for d in uploaded] == ["sizes"]  # the file name's stem
    page.locator(f'#datasets-table tr[data-dataset-id="{uploaded[0]["id"]}"]').wait_for()


@pytest.mark.parametrize(
    "path",
    [
        "/ui/jobs",
        "/ui/jobs/{job}",
        "/ui/compare?ids={job},{other}",
        "/ui/models/iris-mlp",
        "/ui/datasets",
        "/ui/submit",
    ],
)
def test_pages_fit_a_phone_width_screen(
    browser: Browser, stack: Stack, trained: list[dict[str, Any]], path: str
) -> None:
    """At 390 px wide the page itself never scrolls sideways (wide tables scroll in their own
    box)."""
    with guarded_page(browser, stack.base_url, PHONE) as (page, guard):
        page.goto(path.format(job=trained[0]["id"], other=trained[1]["id"]))
        page.wait_for_selector("#loading", state="detached")
        page.wait_for_load_state("networkidle")
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} is {overflow}px wider than a 390px screen"
        guard.assert_clean()


def test_the_loss_curve_grows_while_the_job_trains_and_cancel_stops_it(
    page: Page, stack: Stack, submitted: dict[str, Any]
) -> None:
    """The long digits run: its page's loss chart gains points from the event stream with no
    reload, and the page's cancel button stops the job."""
    job = submitted["live"]
    page.goto(f"/ui/jobs/{job['id']}")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads or navigates
    try:
        first = wait_points(page, "#chart-loss", 0, timeout=120)
        later = wait_points(page, "#chart-loss", first, timeout=60)
    except AssertionError as exc:  # say where the job stood and what the server logged
        raise AssertionError(f"{exc}; job: {stack.job(job['id'])}\n{stack.logs()}") from None
    assert later > first
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
    assert stack.job(job["id"])["status"] == "running"

    page.on("dialog", lambda dialog: dialog.accept())  # a confirm() before cancelling, if any
    page.click("#cancel-job")
    assert stack.wait(job["id"], timeout=60)["status"] == "cancelled"
    page.wait_for_function(
        "document.querySelector('#job-status')?.textContent.includes('cancelled')"
    )
    assert page.evaluate("window.__sameDocument === true")
