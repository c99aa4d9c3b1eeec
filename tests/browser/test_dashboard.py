"""The dashboard's pages in chromium against one real `tas serve` (open: no key exists), with the
network closed except loopback and the console watched (tests/browser/conftest.py).

The module's jobs are tiny: two finished iris runs (three classes, different learning rates)
that the jobs, compare and confusion-matrix tests read, and one long digits run that the live
test watches grow and then cancels from its page."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers.specs import iris_spec
from tests.helpers.stack import Stack

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.helpers.browser import Guard

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Iris has three classes: its confusion matrix is 3 x 3.
IRIS_CLASSES = 3


@pytest.fixture(scope="module")
def trained(stack: Stack) -> list[dict[str, Any]]:
    """Two finished iris jobs that differ in their learning rate (what compare's spec diff shows)."""
    jobs = [
        stack.submit(
            iris_spec(
                name=f"iris-lr{lr}",
                model_name="iris-mlp",
                training={"epochs": 3, "lr": lr, "seed": 1},
            )
        )
        for lr in (0.01, 0.05)
    ]
    done = [stack.wait(j["id"], timeout=180) for j in jobs]
    assert [j["status"] for j in done] == ["succeeded", "succeeded"], stack.logs()
    return done


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
