"""Take the README's dashboard screenshots: `.venv/bin/python docs/screenshots.py`.

Starts a throwaway `tas serve` (API and embedded worker) in a temp dir, trains two small digits
jobs that differ in their learning rate, registers and aliases the model, uploads a small CSV,
then photographs the main pages at 1280x800 in Debian's chromium with the network closed except
loopback (as the browser tests do) into docs/screenshots/. Fails if a page asks for anything off
127.0.0.1 or logs an error it was not asked to provoke."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test helpers start the stack and the guarded browser

from tests.helpers.browser import Guard, chromium_path, guarded_page, launch  # noqa: E402
from tests.helpers.stack import Stack, embedded_stack  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
MODEL = "digits-mlp"


def digits_spec(name: str, lr: float) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": {"name": "digits", "val_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [64], "dropout": 0.1},
        "model_name": MODEL,
        "training": {
            "epochs": 12,
            "batch_size": 32,
            "optimizer": "adam",
            "lr": lr,
            "scheduler": "cosine",
            "seed": 7,
            "log_every_steps": 5,
        },
    }


def prepare(stack: Stack) -> list[str]:
    """Two finished jobs, the model's second version aliased `production`, one upload."""
    jobs = [stack.submit(digits_spec(f"digits-lr{lr}", lr)) for lr in (0.003, 0.0005)]
    ids = [j["id"] for j in jobs]
    for job_id in ids:
        assert stack.wait(job_id, timeout=600)["status"] == "succeeded", stack.logs()
    r = stack.http.put(f"/models/{MODEL}/aliases/production", json={"version": 1})
    assert r.status_code == 200, r.text
    r = stack.http.put(f"/models/{MODEL}/aliases/production", json={"version": 2})
    assert r.status_code == 200, r.text
    rows = "\n".join(
        f"{x / 10:.1f},{(x * 7 % 13) / 10:.1f},{'big' if x > 24 else 'small'}" for x in range(50)
    )
    r = stack.http.post(
        "/datasets",
        files={"file": ("sizes.csv", f"width,height,size\n{rows}\n", "text/csv")},
        data={"target": "size"},
    )
    assert r.status_code in (200, 201), r.text
    return ids


def shoot(stack: Stack, executable: str, ids: list[str]) -> list[Path]:
    """Each page once it has drawn (its loading line gone, the network idle), scrolled to the
    section (the element's enclosing section) named, if any."""
    job = f"/ui/jobs/{ids[0]}"
    shots: dict[str, tuple[str, str | None]] = {
        "jobs": ("/ui/jobs", None),
        "job": (job, None),
        "job-curves": (job, "#chart-loss"),
        "job-evaluation": (job, "#confusion"),
        "compare": ("/ui/compare?ids=" + ",".join(ids), None),
        "models": ("/ui/models", None),
        "model": (f"/ui/models/{MODEL}", None),
        "datasets": ("/ui/datasets", None),
        "submit": ("/ui/submit", None),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    written = []
    with launch(executable) as browser:
        for name, (path, section) in shots.items():
            with guarded_page(browser, stack.base_url) as (page, guard):
                page.goto(path)
                page.wait_for_selector("#loading", state="detached")
                page.wait_for_load_state("networkidle")
                if name == "submit":
                    bad_lr(page, guard)
                if section:
                    page.wait_for_selector(section)
                    page.evaluate(
                        "(s) => (document.querySelector(s).closest('section')"
                        " ?? document.querySelector(s)).scrollIntoView()",
                        section,
                    )
                page.wait_for_timeout(300)  # charts draw on the next animation frame
                target = OUT / f"{name}.png"
                page.screenshot(path=str(target))
                guard.assert_clean()
                written.append(target)
    return written


def bad_lr(page: Page, guard: Guard) -> None:
    """The submit page after the API refused a negative learning rate (its 422, by the field)."""
    guard.expect_error(r"status of 422")
    spec = digits_spec("my-run", -0.01)
    page.fill("#spec", json.dumps(spec, indent=2))
    page.click("#submit-job")
    page.wait_for_selector('[data-testid="field-error"][data-loc="training.lr"]')


def main() -> None:
    executable = chromium_path()
    if executable is None:
        sys.exit("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="tas-shots-") as tmp, embedded_stack(Path(tmp)) as s:
        ids = prepare(s)
        for path in shoot(s, executable, ids):
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
