"""Debian's chromium driven by Playwright, with the network closed except loopback.

Playwright's own browser download is not available (no internet in CI), so the browser is the
system's `chromium` package, launched by path. Every context a test opens goes through `Guard`:
a request to any host but 127.0.0.1 is aborted and recorded (the dashboard must render offline,
so such a request is a bug even when it would have failed anyway), and the console's errors and
the page's uncaught exceptions are recorded; the test asserts both lists stay empty.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    Playwright,
    Route,
    sync_playwright,
)

from tests.helpers.servers import missing

#: The only host a page may reach: the tas under test.
LOOPBACK = "127.0.0.1"
#: Chromium in a container: no setuid sandbox, /dev/shm is small, no GPU.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str | None:
    """Debian's chromium (`apt-get install chromium`), or None when it is not installed."""
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def require_chromium() -> str:
    """Chromium's path; a missing one skips the test, or fails it where services are required
    (TAS_REQUIRE_SERVICES=1, as in CI, which installs it)."""
    found = chromium_path()
    if found is None:
        missing("chromium", "apt-get install chromium")
        raise AssertionError("unreachable: missing() skips or fails")
    return found


@contextlib.contextmanager
def launch(executable: str) -> Iterator[Browser]:
    """A headless chromium for the duration of the block."""
    with sync_playwright() as p:
        browser = _launch(p, executable)
        try:
            yield browser
        finally:
            browser.close()


def _launch(p: Playwright, executable: str) -> Browser:
    return p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


@dataclass
class Guard:
    """What a browser context did that a dashboard page must not do."""

    #: Requests aimed anywhere but 127.0.0.1 (aborted before they left).
    outside: list[str] = field(default_factory=list)
    #: Console messages of type error, and uncaught exceptions ("pageerror: ...").
    errors: list[str] = field(default_factory=list)
    #: Patterns of console errors a test provoked on purpose (a 422 it asked for).
    expected: list[re.Pattern[str]] = field(default_factory=list)

    def attach(self, context: BrowserContext) -> None:
        context.route("**/*", self._route)
        context.on("page", self.watch)

    def watch(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def expect_error(self, pattern: str) -> None:
        """A console error matching `pattern` is the test's doing, not the page's fault (chromium
        logs every 4xx answer to a fetch as "Failed to load resource: ... status of 422")."""
        self.expected.append(re.compile(pattern))

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.expected)]

    def assert_clean(self) -> None:
        assert self.outside == [], f"requests left 127.0.0.1: {self.outside}"
        assert self.unexpected_errors() == [], f"browser console errors: {self.unexpected_errors()}"

    def _route(self, route: Route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname != LOOPBACK:
            self.outside.append(url)
            route.abort("blockedbyclient")
            return
        # The page may go away (navigated, closed) while the request waits.
        with contextlib.suppress(Error):
            route.continue_()

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            where = msg.location.get("url", "")
            self.errors.append(f"console: {msg.text} ({where})")


@contextlib.contextmanager
def guarded_page(
    browser: Browser, base_url: str, viewport: dict[str, int] | None = None
) -> Iterator[tuple[Page, Guard]]:
    """A page in a fresh context (its own cookies) behind a `Guard`."""
    guard = Guard()
    context = browser.new_context(base_url=base_url, viewport=viewport or DESKTOP)  # type: ignore[arg-type]
    context.set_default_timeout(20_000)
    guard.attach(context)
    try:
        page = context.new_page()
        yield page, guard
    finally:
        context.close()
