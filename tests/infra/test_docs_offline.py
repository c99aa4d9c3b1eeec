"""`/docs` renders with no internet: proven by headless Chromium with every host but 127.0.0.1
unresolvable. Swagger UI only draws its operation blocks once its JS bundle has loaded and run, so
an ``opblock`` for ``/jobs`` in the rendered DOM means the assets came from the app itself."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.helpers import servers

# Closes the network to everything but loopback by IP (hostnames, CDNs included, do not resolve).
OFFLINE_RULES = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
JOBS_OPBLOCK = 'data-path="/jobs"'


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    servers.missing("chromium", "apt-get install chromium")
    raise AssertionError("unreachable")


def render_dom(url: str, profile: Path, rules: str = OFFLINE_RULES) -> str:
    cmd = [
        chromium_binary(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--host-resolver-rules={rules}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        url,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"chromium exited with {p.returncode}:\n{p.stderr[-3000:]}"
    return p.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """The parent's environment without any TAS_* setting (a developer's own database, keys...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAS_")}
    env.update(extra)
    return env


def tas_command() -> list[str]:
    script = Path(sys.executable).with_name("tas")
    if script.exists():
        return [str(script)]
    # Not installed as a console script (yet): the same entry point, through this interpreter.
    return [
        sys.executable,
        "-c",
        "import sys; from tas.cli import main; sys.argv[0] = 'tas'; main()",
    ]


@pytest.mark.integration
def test_docs_render_offline_in_headless_chromium(tmp_path: Path) -> None:
    chromium_binary()
    port = servers.free_port()
    data_dir = tmp_path / "data"
    cmd = [*tas_command(), "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port)]
    with servers.http_process(
        cmd, port, env=clean_env(TAS_DATA_DIR=str(data_dir)), cwd=tmp_path
    ) as base:
        html = httpx.get(f"{base}/docs", timeout=10).text
        assert "/static-offline-docs/swagger-ui-bundle.js" in html
        assert re.findall(r'(?:src|href)="(?:https?:)?//', html) == [], "docs load remote assets"
        dom = render_dom(f"{base}/docs", tmp_path / "profile")
    assert "swagger-ui" in dom
    assert "opblock" in dom, "Swagger UI drew no operations: its JS did not load offline"
    assert JOBS_OPBLOCK in dom


CONTROL_APP = textwrap.dedent(
    """
    import os
    from pathlib import Path

    import fastapi_offline
    from fastapi import FastAPI
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    ASSETS = os.environ["CONTROL_ASSET_BASE"] + "/static-offline-docs"
    app = FastAPI(docs_url=None, redoc_url=None)
    app.mount(
        "/static-offline-docs",
        StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"),
    )

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="control",
            swagger_js_url=ASSETS + "/swagger-ui-bundle.js",
            swagger_css_url=ASSETS + "/swagger-ui.css",
        )

    @app.get("/jobs")
    def jobs() -> list[int]:
        return []
    """
)


@pytest.mark.integration
def test_control_assets_by_hostname_are_blocked(tmp_path: Path) -> None:
    """The harness itself: the same Swagger assets fetched through a host name (as from a CDN)
    must not load under the offline rules, or a green docs test would prove nothing."""
    chromium_binary()
    (tmp_path / "control_app.py").write_text(CONTROL_APP)
    port = servers.free_port()
    cmd = [sys.executable, "-m", "uvicorn", "control_app:app", "--port", str(port)]
    cmd += ["--app-dir", str(tmp_path)]
    env = clean_env(CONTROL_ASSET_BASE=f"http://localhost:{port}")
    with servers.http_process(cmd, port, env=env, ready_path="/openapi.json") as base:
        allowed = render_dom(f"{base}/docs", tmp_path / "p1", OFFLINE_RULES + ", EXCLUDE localhost")
        blocked = render_dom(f"{base}/docs", tmp_path / "p2")
    assert JOBS_OPBLOCK in allowed  # the control page does render when its asset host resolves
    assert "swagger-ui" in blocked
    assert "opblock" not in blocked
