"""ASHA against running every trial to the end: the same trials (a seeded random sampler draws
trial n's parameters from the seed, the trial number and the path alone, so both searches try
exactly the same values), on digits, through a real `tas serve` (API, controller, embedded
worker). Reports, side by side, the best val_accuracy each found, the epochs its trials trained
in all, how many trials ASHA stopped and the wall time.

    .venv/bin/python bench/search_asha.py [--trials 16] [--epochs 20] [--seeds 1 2]

Not a test: timings depend on the machine. Writes the `## Searches` section of BENCHMARKS.md
(unless --no-write).
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/search_asha.py` puts bench/ first
    sys.path.insert(0, str(ROOT))

import typer  # noqa: E402

from bench.report import code_rev, write_section  # noqa: E402
from tests.helpers import searches  # noqa: E402
from tests.helpers.stack import Stack, embedded_stack  # noqa: E402

SECTION = "## Searches"


def _t(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def body(name: str, *, seed: int, trials: int, epochs: int, asha: bool) -> dict[str, Any]:
    return searches.search_body(
        name,
        spec=searches.digits_base(epochs=epochs, batch_size=16),
        space={
            "training.lr": {"type": "float", "low": 0.00003, "high": 0.3, "log": True},
            "model.hidden": {"type": "categorical", "choices": [[32], [64], [128]]},
            "training.weight_decay": {"type": "float", "low": 0.0, "high": 0.01},
        },
        sampler={"type": "random", "seed": seed},
        pruner={"type": "asha", "min_epochs": 1, "reduction_factor": 3}
        if asha
        else {"type": "none"},
        max_trials=trials,
        max_concurrent=1,
    )


def run(stack: Stack, spec: dict[str, Any]) -> dict[str, Any]:
    done = searches.wait(stack, searches.create(stack, spec)["id"], timeout=7200)
    if done["status"] != "succeeded":
        raise RuntimeError(f"search {done['id']} {done['status']}: {done.get('error')}")
    return done


def summary(done: dict[str, Any]) -> dict[str, Any]:
    trials = done["trials"]
    return {
        "best": done["best"]["value"],
        "best_trial": done["best"]["number"],
        "epochs": sum(t["epochs"] for t in trials),
        "pruned": done["counts"]["pruned"],
        "wall": _t(done["finished_at"]) - _t(done["created_at"]),
        "trials": {t["number"]: t for t in trials},
    }


def fate(full: dict[str, Any], asha: dict[str, Any]) -> str:
    """What ASHA did with the trial that was best when every trial ran to the end."""
    number = full["best_trial"]
    t = asha["trials"][number]
    if t["state"] == "pruned":
        tie = asha["trials"][asha["best_trial"]]["value"] == full["best"]
        also = f"; trial {asha['best_trial']} ties it" if tie else ""
        return f"trial {number} pruned after {t['epochs']} epochs{also}"
    return f"trial {number} kept to the end"


def render(rows: list[str], *, trials: int, epochs: int, rev: str) -> str:
    """The section's text around the measured rows."""
    return "\n".join(
        [
            f"ASHA (min 1 epoch, reduction factor 3: rungs at epochs 1, 3, 9) against the same"
            f" {trials} trials run to the end, {epochs} epochs each, on digits through `tas serve`"
            " (one embedded worker, one trial at a time). A seeded random sampler draws trial n's"
            " parameters from the seed, n and the path alone, so both searches try exactly the"
            " same values: learning rate log-uniform in [3e-5, 0.3], hidden [32], [64] or [128],"
            " weight decay in [0, 0.01]; adam, batch 16, seeded training. Best: the best trial's"
            " best-epoch val_accuracy. Epochs: every epoch the trials' jobs trained, a pruned"
            " trial's included (it stops at the worker's next cancel check after the controller"
            " has seen the epoch it is pruned at, often an epoch or two later). Wall: the"
            " search's creation to its finish, each trial's start-up included (a fresh worker"
            " process and its data, about a second whatever the epochs), so it shrinks less than"
            " the epochs do; on a shared machine it is also the noisiest figure."
            f" {platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared;"
            f" code {rev}.",
            "",
            "| seed | search | best val_accuracy | epochs trained | pruned | wall (s) |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Both searches run the same trials, so a lower best under ASHA means it stopped the"
            " trial that would have won, and an equal best from another trial number means a tie"
            " (the search that ran everything to the end picks the lowest number among equals,"
            " and ASHA had stopped that one early). Epochs are the cost that does not depend on"
            " the machine's load.",
            "",
            "    .venv/bin/python bench/search_asha.py [--trials 16] [--epochs 20] [--seeds 1 --seeds 2]",
        ]
    )


def main(
    trials: Annotated[int, typer.Option(help="Trials per search.")] = 16,
    epochs: Annotated[int, typer.Option(help="Epochs of a trial run to the end.")] = 20,
    seeds: Annotated[list[int], typer.Option(help="Sampler seeds (a pair of searches each).")] = [  # noqa: B006
        1
    ],
    write: Annotated[bool, typer.Option(help="Write the BENCHMARKS.md section.")] = True,
) -> None:
    rev = code_rev()  # the code measured, before anything is committed meanwhile
    tmp = Path(tempfile.mkdtemp(prefix="tas-search-bench-"))
    rows = []
    try:
        with embedded_stack(tmp, TAS_SEARCH_INTERVAL_S="0.25") as stack:
            for seed in seeds:
                full = summary(
                    run(
                        stack,
                        body(f"full-{seed}", seed=seed, trials=trials, epochs=epochs, asha=False),
                    )
                )
                asha = summary(
                    run(
                        stack,
                        body(f"asha-{seed}", seed=seed, trials=trials, epochs=epochs, asha=True),
                    )
                )
                for name, r in (("every trial to the end", full), ("ASHA", asha)):
                    rows.append(
                        f"| {seed} | {name} | {r['best']:.4f} (trial {r['best_trial']}) |"
                        f" {r['epochs']} | {r['pruned']} | {r['wall']:.0f} |"
                    )
                    print(rows[-1], flush=True)
                rows.append(
                    f"| {seed} | ASHA / to the end | {asha['best'] - full['best']:+.4f}"
                    f" ({fate(full, asha)}) | {asha['epochs'] / full['epochs']:.0%} | |"
                    f" {asha['wall'] / full['wall']:.0%} |"
                )
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body_md = render(rows, trials=trials, epochs=epochs, rev=rev)
    if write:
        write_section(SECTION, body_md)


if __name__ == "__main__":
    typer.run(main)
