"""What tas adds around Optuna's samplers."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.samplers import RandomSampler

from tas.search.study import PerDrawSampler, clipped


def test_a_float_draw_past_its_range_is_held_inside_it() -> None:
    """TPE's log-space draws can come back a few floats past `high`; the trial's spec would then
    refuse them."""
    log = FloatDistribution(1e100, 1e100 * (1 + 1e-12), log=True)
    assert clipped(1.0000000000010057e100, log) == log.high
    assert clipped(0.5e100, log) == log.low
    assert clipped(1.0000000000005e100, log) == 1.0000000000005e100
    assert clipped(3, IntDistribution(0, 2)) == 3  # ints are Optuna's own to round


class Overshooting(RandomSampler):
    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        return dist.high * (1 + 1e-9)


def test_every_draw_of_a_search_s_sampler_is_inside_its_range() -> None:
    sampler = PerDrawSampler(lambda seed: Overshooting(seed=seed), 0)
    study = optuna.create_study(sampler=sampler)
    trial = study.ask({"lr": FloatDistribution(1e-4, 1.0, log=True)})
    assert trial.params["lr"] == 1.0
