"""The search space: what a parameter may be, which spec paths a space may set, how a trial's
parameters become its spec, and which specs are checked before a search is accepted."""

from __future__ import annotations

import math
import random

import optuna
import pytest
from pydantic import TypeAdapter, ValidationError

from tas.search import space as sp
from tas.search import study as study_mod

PARAM: TypeAdapter[sp.Param] = TypeAdapter(sp.Param)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"type": "float", "low": 0.1, "high": 0.01}, "must not be above high"),
        ({"type": "float", "low": 0, "high": 1, "log": True}, "log range needs low above 0"),
        ({"type": "int", "low": 32, "high": 100, "step": 32}, "e.g. 96 or 128"),
        ({"type": "int", "low": 0, "high": 8, "log": True}, "low of at least 1"),
        ({"type": "categorical", "choices": [[8], [8]]}, "listed twice"),
        ({"type": "categorical", "choices": []}, "at least 1"),
        ({"type": "float", "low": 0.1, "high": 1, "steps": 2}, "Extra inputs"),
        ({"type": "uniform", "low": 0.1, "high": 1}, "float"),
        ({"type": "int", "low": 0, "high": 2**53 + 1}, "less than or equal to 9007199254740992"),
        ({"type": "float", "low": -1e308, "high": 1e308}, "the range is too wide"),
        ({"type": "float", "low": 0, "high": float("inf")}, "finite number"),
        ({"type": "categorical", "choices": [[float("nan")]]}, "not finite"),
        # Narrower than TPE's arithmetic holds (see MIN_FLOAT_WIDTH): its draws fail on a NaN.
        ({"type": "float", "low": 0.0, "high": 1e-323}, "too narrow for the sampler"),
        ({"type": "float", "low": 1e-310, "high": 1.0000001e-310}, "too narrow for the sampler"),
        ({"type": "float", "low": 1.0, "high": 1.0 + 1e-10}, "too narrow for the sampler"),
        (
            {"type": "float", "low": 1e100, "high": 1e100 * (1 + 1e-15), "log": True},
            "log range is too narrow",
        ),
        ({"type": "float", "low": 1.0, "high": 1.0 + 1e-10, "log": True}, "log range is too"),
    ],
)
def test_a_bad_parameter_is_refused_saying_why(raw: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError) as exc:
        PARAM.validate_python(raw)
    assert says in str(exc.value)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("training.lr", None),
        ("training.early_stopping.patience", None),
        ("model.hidden", None),
        ("training", None),
        ("training.lrr", "did you mean 'lr'?"),
        ("trainin.lr", "did you mean 'training'?"),
        ("training.lr.x", "training.lr has no fields below it"),
        ("name", "cannot be searched"),
        ("tags", "cannot be searched"),
        ("model_name", "cannot be searched"),
    ],
)
def test_a_path_must_name_a_spec_field(path: str, problem: str | None) -> None:
    found = sp.path_problem(path)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_paths_inside_each_other_are_refused() -> None:
    assert sp.overlap_problem(["training.lr", "model.hidden"]) is None
    found = sp.overlap_problem(["training.lr", "training"])
    assert found is not None and found[0] == "training.lr"


def test_a_trial_spec_sets_each_path_and_starts_missing_sections_empty() -> None:
    base = {"name": "s", "dataset": {"name": "digits"}, "training": {"lr": 0.1, "epochs": 3}}
    spec = sp.trial_spec(
        base,
        {"training.lr": 0.01, "training.early_stopping.patience": 2, "model.hidden": [8, 8]},
        name="s-t0",
    )
    assert spec == {
        "name": "s-t0",
        "dataset": {"name": "digits"},
        "training": {"lr": 0.01, "epochs": 3, "early_stopping": {"patience": 2}},
        "model": {"hidden": [8, 8]},
    }
    assert base["training"] == {"lr": 0.1, "epochs": 3}  # the base is never changed


def test_a_trial_job_spec_registers_under_its_name_and_monitors_the_objective() -> None:
    base = {"name": "s", "model_name": "m", "dataset": {"name": "digits"}}
    spec = sp.trial_job_spec(base, {}, name="s-t1", metric="val_loss")
    assert "model_name" not in spec and spec["name"] == "s-t1"
    assert spec["checkpoint"] == {"monitor": "val_loss"}
    kept = sp.trial_job_spec(
        {**base, "checkpoint": {"monitor": "val_accuracy"}}, {}, name="x", metric="val_loss"
    )
    assert kept["checkpoint"] == {"monitor": "val_accuracy"}


def test_a_trial_name_fits_a_job_name() -> None:
    assert sp.trial_name("s", 3) == "s-t3"
    long = sp.trial_name("x" * 64, 123)
    assert len(long) == 64 and long.endswith("-t123")


def test_categorical_choices_go_through_optuna_as_json_and_come_back_whole() -> None:
    p = PARAM.validate_python({"type": "categorical", "choices": [[256, 256], "adam", 1, None]})
    dist = sp.distribution(p)
    assert dist.choices == ("[256,256]", '"adam"', "1", "null")  # type: ignore[attr-defined]
    assert [sp.decode(p, c) for c in dist.choices] == [[256, 256], "adam", 1, None]  # type: ignore[attr-defined]


def test_a_grid_is_the_product_of_choices_and_stepped_int_ranges() -> None:
    space = sp.parse(
        {
            "training.batch_size": {"type": "int", "low": 32, "high": 96, "step": 32},
            "model.hidden": {"type": "categorical", "choices": [[8], [16]]},
        }
    )
    assert sp.grid(space) == {
        "training.batch_size": [32, 64, 96],
        "model.hidden": ["[8]", "[16]"],
    }
    assert sp.grid_size(space) == 6
    assert sp.grid_size(sp.parse({"training.lr": {"type": "float", "low": 0.1, "high": 1}})) is None
    # Counted, never listed: a range of 10**15 values costs nothing to size.
    huge = sp.parse({"training.seed": {"type": "int", "low": 0, "high": 10**15}})
    assert sp.grid_size(huge) == 10**15 + 1


def test_a_stored_range_is_read_back_as_stored_and_counted_past_int64() -> None:
    """A space stored before the 2**53 bound is read back unchecked (its search was accepted
    then), and its size is counted by arithmetic: `len(range)` overflows past 2**63 - 1."""
    stored = {"training.seed": {"type": "int", "low": -(2**70), "high": 2**70, "step": 2}}
    space = sp.parse(stored)
    assert space["training.seed"].model_dump() == {**stored["training.seed"], "log": False}
    assert sp.grid_size(space) == 2**70 + 1
    assert [p.params for p in sp.probes(space)][:2] == [
        {"training.seed": -(2**70)},
        {"training.seed": 2**70},
    ]
    with pytest.raises(ValidationError, match="less than or equal to 9007199254740992"):
        PARAM.validate_python(stored["training.seed"])


def test_probes_cover_every_choice_bound_and_both_corners() -> None:
    space = sp.parse(
        {
            "training.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
            "training.batch_size": {"type": "int", "low": 1, "high": 100},
            "training.optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        }
    )
    probes = list(sp.probes(space))
    blamed = [(p.blame, p.params[p.blame]) for p in probes if p.blame is not None]
    assert blamed == [
        ("training.lr", 0.001),
        ("training.lr", 0.1),
        ("training.batch_size", 1),
        ("training.batch_size", 100),
        ("training.optimizer", "adam"),
        ("training.optimizer", "sgd"),
    ]
    corners = [p.params for p in probes if p.blame is None]
    assert corners == [
        {"training.lr": 0.001, "training.batch_size": 1, "training.optimizer": "adam"},
        {"training.lr": 0.1, "training.batch_size": 100, "training.optimizer": "sgd"},
    ]
    # A short int range is checked value by value (a middle value can be the bad one).
    short = sp.parse({"training.batch_size": {"type": "int", "low": 30, "high": 36, "step": 2}})
    assert [p.params["training.batch_size"] for p in sp.probes(short) if p.blame] == [
        30,
        32,
        34,
        36,
    ]


def test_a_small_grid_is_probed_whole() -> None:
    space = sp.parse(
        {
            "training.lr": {"type": "categorical", "choices": [0.1, 0.01]},
            "model.hidden": {"type": "categorical", "choices": [[8], [16], [32]]},
        }
    )
    probes = list(sp.probes(space, whole_grid=True))
    assert [p.blame for p in probes[:5]] == ["training.lr"] * 2 + ["model.hidden"] * 3
    combos = [p.params for p in probes[5:]]
    assert all(p.blame is None for p in probes[5:])
    assert len(combos) == 6 and len({str(c) for c in combos}) == 6


def accepted(low: float, high: float, log: bool) -> bool:
    try:
        PARAM.validate_python({"type": "float", "low": low, "high": high, "log": log})
    except ValidationError:
        return False
    return True


def narrowest_high(low: float, near: float, log: bool) -> float:
    """The smallest `high` accepted with `low`, found float by float from `near` (a log range's
    ends near 1e300 take hundreds: many floats there share one natural log)."""
    high = near
    for _ in range(4096):
        if accepted(low, high, log):
            break
        high = math.nextafter(high, math.inf)
    for _ in range(4096):
        if not accepted(low, math.nextafter(high, -math.inf), log):
            return high
        high = math.nextafter(high, -math.inf)
    raise AssertionError(f"no bound within 4096 floats of {near!r}")


def run_tpe(param: sp.FloatParam, trials: int = 8) -> None:
    """TPE past its startup trials (the draws that failed on a NaN below the bounds), as a
    search drives it: a fresh sampler per draw, seeded from the search's seed."""
    sampler = study_mod.make_sampler({"type": "tpe", "startup_trials": 2}, 7, {"x": param})
    study = optuna.create_study(sampler=sampler)
    rng = random.Random(0)
    for _ in range(trials):
        trial = study.ask({"x": sp.distribution(param)})
        x = trial.params["x"]
        assert param.low <= x <= param.high, x
        study.tell(trial, rng.random())
    assert len(study.trials) == trials


@pytest.mark.parametrize(
    ("low", "near", "log"),
    [
        (0.0, sp.MIN_FLOAT_WIDTH, False),
        (-2 * sp.MIN_FLOAT_WIDTH, -sp.MIN_FLOAT_WIDTH, False),
        (1.0, 1.0 + 1e-9, False),
        (1e300, 1e300 * (1 + 1e-9), False),
        (-1e300, -1e300 * (1 - 1e-9), False),
        (1.0, math.exp(1e-9), True),
        (1e100, 1e100 * math.exp(1e-9), True),
        (1e-300, 1e-300 * math.exp(1e-9), True),
        (1e308 / math.exp(1e-9), 1e308, True),
    ],
)
def test_a_range_just_wide_enough_runs_under_tpe(low: float, near: float, log: bool) -> None:
    """At the narrowest range accepted (the float below it is refused), TPE draws without a NaN,
    inside the range: the bounds hold TPE's arithmetic with room to spare, at every magnitude."""
    high = narrowest_high(low, near, log)
    assert abs(high - near) <= 1e-6 * max(abs(near), sp.MIN_FLOAT_WIDTH), "the bound moved"
    assert not accepted(low, math.nextafter(high, -math.inf), log)
    run_tpe(sp.FloatParam(type="float", low=low, high=high, log=log))


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "float", "low": 0.25, "high": 0.25},
        {"type": "float", "low": 1e-300, "high": 1e-300, "log": True},
        {"type": "float", "low": 1e-320, "high": math.nextafter(1e-320, 1), "log": True},
    ],
)
def test_single_values_and_subnormal_log_ranges_are_accepted(raw: dict[str, object]) -> None:
    """A single value (Optuna hands it back without sampling) and a log range between subnormal
    ends, which is wide on the log scale TPE works on."""
    param = PARAM.validate_python(raw)
    assert isinstance(param, sp.FloatParam)
    run_tpe(param)


def test_a_stored_narrow_float_range_is_read_back_as_stored() -> None:
    """A space accepted before the narrowness bound is read back unchecked, as any stored one."""
    stored = {"training.lr": {"type": "float", "low": 0.0, "high": 1e-323, "log": False}}
    space = sp.parse(stored)
    assert space["training.lr"].model_dump() == {**stored["training.lr"], "type": "float"}
    with pytest.raises(ValidationError, match="too narrow"):
        PARAM.validate_python({**stored["training.lr"], "type": "float"})
