"""The dashboard in a real browser: Debian's chromium, driven by Playwright for Python, against a
real `tas serve` (its API and its embedded worker, a child process running Celery) on 127.0.0.1.

One browser and one stack per test module (starting one costs seconds, and jobs
take more), so a module's tests share its jobs; one fresh context (cookies, storage) per test.
Every test's context is behind a `Guard`: a request to a host other than 127.0.0.1 is aborted
and recorded, console errors and uncaught exceptions are recorded, and the test fails on either.

Without chromium or the playwright package the tests skip, unless TAS_REQUIRE_SERVICES=1 (CI),
where that is a failure.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.helpers import servers
from tests.helpers.stack import Stack, embedded_stack

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from tests.helpers.browser import Guard


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Per module, not per session: while Playwright's sync API runs, its event loop is the
    thread's running loop, so every later test in the same process that calls asyncio.run()
    would fail; the browser is stopped when the module's tests are done."""
    if importlib.util.find_spec("playwright") is None:
        servers.missing("playwright (Python package)", "pip install -e '.[dev]'")
    from tests.helpers.browser import launch, require_chromium

    with launch(require_chromium()) as b:
        yield b


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[Stack]:
    """`tas serve` with its embedded worker. Depends on `browser` so that a missing chromium
    skips before a server starts."""
    with embedded_stack(tmp_path_factory.mktemp("browser")) as s:
        yield s


@pytest.fixture
def guarded(browser: Browser, stack: Stack) -> Iterator[tuple[Page, Guard]]:
    """A 1280x800 page in its own context; after the test, nothing left loopback and the console
    stayed clean."""
    from tests.helpers.browser import guarded_page

    with guarded_page(browser, stack.base_url) as (page, guard):
        yield page, guard
        guard.assert_clean()


@pytest.fixture
def page(guarded: tuple[Page, Guard]) -> Page:
    return guarded[0]


@pytest.fixture
def guard(guarded: tuple[Page, Guard]) -> Guard:
    return guarded[1]
