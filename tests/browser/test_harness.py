"""The browser suite's own set-up: CI (TAS_REQUIRE_SERVICES=1) fails when chromium is missing
rather than skipping the dashboard's tests unseen."""

from __future__ import annotations

import pytest

pytest.importorskip("playwright")

from tests.helpers import browser


def test_a_missing_chromium_fails_where_services_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(browser, "chromium_path", lambda: None)
    monkeypatch.setenv("TAS_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="chromium is required"):
        browser.require_chromium()
    monkeypatch.setenv("TAS_REQUIRE_SERVICES", "0")
    with pytest.raises(pytest.skip.Exception, match="chromium not available"):
        browser.require_chromium()
