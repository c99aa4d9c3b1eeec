"""A search space: job spec paths (`training.lr`, `model.hidden`) and the values each may take.

A trial's parameters are set into the base spec at their paths (`trial_spec`), and the result is
submitted as any job spec is. Before a search is accepted, `probes` lists the specs whose
checking covers the space: each parameter's bounds (and every value of a short int range) and
each categorical choice with the other parameters at their first value, then the all-low and
all-high corners; a grid small enough is checked whole.

Optuna's categorical choices are scalars, while a choice here may be any JSON value (a list of
layer widths): each choice is handed to Optuna as its canonical JSON text and read back with
`decode`, so the value a trial trains with is exactly the one the client sent."""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from tas.core.spec import JobSpec

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

#: Parameters one search may vary, choices one categorical may list, and combinations a grid
#: may have: bounds on what one request makes the server check and store.
MAX_PARAMS = 16
MAX_CHOICES = 64
MAX_GRID = 10_000
#: A grid with at most this many combinations is checked whole before the search is accepted;
#: a larger one as any space is (bounds, choices, corners).
CHECK_WHOLE_GRID = 256
#: An int range with at most this many values has every value checked.
CHECK_EVERY_INT = 32
#: The largest magnitude an int range's ends (and step) may have. Optuna holds every parameter
#: as a float, in memory and in its storage, and a float holds every integer exactly only up to
#: 2**53: beyond it a drawn value is rounded (2**63 - 1 comes back as 2**63, past int64 and the
#: spec's seed bound) and TPE's arithmetic on such a range gives NaN.
MAX_INT = 2**53
#: The narrowest float range (other than a single value, low == high) a space may hold, as a
#: fraction of its ends' magnitude, and in absolute terms. TPE builds its kernels over the range
#: (over ln low .. ln high for a log range), each at least 1/100 of its width: in a linear range
#: of width ~1e-323 (a few subnormal steps) that width rounds to zero, and in a log range whose
#: ends differ by 1 part in 1e15, ln high == ln low when the ends are large (1e100); either way
#: TPE divides by zero and every draw fails on a NaN. At these bounds (checked by running TPE on
#: them) the kernels stay normal floats many steps wide.
MIN_FLOAT_WIDTH_REL = 1e-9
MIN_FLOAT_WIDTH = 1e-300
#: Spec paths a space may not set: a trial's name and registered model name are the search's,
#: and tags label jobs rather than train them.
RESERVED = ("name", "model_name", "tags")


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class FloatParam(_Param):
    """A real number in [low, high], drawn uniformly or, with `log`, log-uniformly."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must not be above high ({self.high:g})")
        if not math.isfinite(self.high - self.low):
            # The samplers draw low + u * (high - low): numpy refuses a width that overflows.
            raise ValueError(
                "the range is too wide: high - low must be a finite float (at most"
                f" {sys.float_info.max:g}); got low {self.low:g}, high {self.high:g}"
            )
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low above 0; got {self.low:g}")
        if self.low == self.high:
            return self  # a single value: Optuna hands it back without sampling
        if self.log:
            if math.log(self.high) - math.log(self.low) < MIN_FLOAT_WIDTH_REL:
                raise ValueError(
                    "the log range is too narrow for the sampler: ln(high) - ln(low) must be"
                    f" at least {MIN_FLOAT_WIDTH_REL:g} (high about low × (1 +"
                    f" {MIN_FLOAT_WIDTH_REL:g}) or more), or low equal to high for a single"
                    f" value; got low {self.low!r}, high {self.high!r}"
                )
        elif self.high - self.low < max(
            MIN_FLOAT_WIDTH_REL * max(abs(self.low), abs(self.high)), MIN_FLOAT_WIDTH
        ):
            raise ValueError(
                "the range is too narrow for the sampler: high - low must be at least"
                f" {MIN_FLOAT_WIDTH_REL:g} × max(|low|, |high|) and at least {MIN_FLOAT_WIDTH:g},"
                f" or low equal to high for a single value; got low {self.low!r}, high"
                f" {self.high!r}"
            )
        return self


class IntParam(_Param):
    """An integer in low, low + step, ..., high (or, with `log`, log-uniform with step 1)."""

    type: Literal["int"]
    low: int = Field(
        ...,
        ge=-MAX_INT,
        le=MAX_INT,
        description="At least -2**53: the sampler holds values as floats.",
    )
    high: int = Field(
        ...,
        ge=-MAX_INT,
        le=MAX_INT,
        description="At most 2**53: the sampler holds values as floats.",
    )
    step: int = Field(1, ge=1, le=MAX_INT)
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not be above high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("a log range needs low of at least 1 and step 1")
        if (self.high - self.low) % self.step:
            top = self.low + (self.high - self.low) // self.step * self.step
            raise ValueError(
                f"high must be low + a whole number of steps: {self.low} + k × {self.step}"
                f" (e.g. {top} or {top + self.step}); got {self.high}"
            )
        return self

    def values(self) -> range:
        return range(self.low, self.high + 1, self.step)

    def count(self) -> int:
        """How many values the range holds, by arithmetic: `len(range)` fails past 2**63 - 1
        values, which a stored space read back unchecked (`parse`) may still hold."""
        return (self.high - self.low) // self.step + 1


class CategoricalParam(_Param):
    """One of `choices`, each any JSON value (a number, a string, a list such as [256, 256])."""

    type: Literal["categorical"]
    choices: list[JsonValue] = Field(..., min_length=1, max_length=MAX_CHOICES)

    @model_validator(mode="after")
    def _distinct(self) -> CategoricalParam:
        seen: set[str] = set()
        for choice in self.choices:
            if not _finite(choice):
                # JSON has no infinity: a choice holding one (1e999 parses as it) could be
                # neither stored as JSON nor handed to Optuna as its JSON text.
                raise ValueError(f"choice {choice!r} holds a number that is not finite")
            text = encode(choice)
            if text in seen:
                raise ValueError(f"choice {choice!r} is listed twice; choices must be distinct")
            seen.add(text)
        return self


def _finite(value: Any) -> bool:
    """Whether every number in a JSON value is finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def encode(value: Any) -> str:
    """A categorical choice as Optuna holds it: its canonical JSON text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def decode(param: Param, raw: Any) -> Any:
    """The value a trial trains with, from what Optuna holds."""
    if isinstance(param, CategoricalParam):
        return json.loads(raw)
    if isinstance(param, IntParam):
        return int(raw)
    return float(raw)


def distribution(param: Param) -> BaseDistribution:
    # Imported here: the API process validates spaces without loading Optuna.
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if isinstance(param, FloatParam):
        return FloatDistribution(param.low, param.high, log=param.log)
    if isinstance(param, IntParam):
        return IntDistribution(param.low, param.high, log=param.log, step=param.step)
    return CategoricalDistribution([encode(c) for c in param.choices])


Space = dict[str, Param]


_KINDS: dict[str, type[FloatParam | IntParam | CategoricalParam]] = {
    "float": FloatParam,
    "int": IntParam,
    "categorical": CategoricalParam,
}


def parse(raw: Mapping[str, Any]) -> Space:
    """A stored space (its JSON) as parameters. It was checked when its search was created, so
    it is read back as stored, not checked again: a bound added since must not strand a search
    that was accepted under the earlier rules."""
    return {path: _KINDS[p["type"]].model_construct(**p) for path, p in raw.items()}


def path_problem(path: str) -> str | None:
    """What is wrong with `path` as a place in a job spec a search may set, if anything: it must
    name a field (nested fields dotted, `training.early_stopping.patience`), not one of
    `RESERVED`."""
    parts = path.split(".")
    if parts[0] in RESERVED:
        return (
            f"{parts[0]!r} cannot be searched: a trial's name and registered model come from the"
            " search, and tags label jobs; set them on the search or its base spec"
        )
    model: type[BaseModel] | None = JobSpec
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the spec"
        if model is None:
            return f"{'.'.join(parts[:i])} has no fields below it; search it whole"
        fields = [f for f in model.model_fields if i or f not in RESERVED]
        if part not in model.model_fields:
            close = difflib.get_close_matches(part, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"{part!r} is not a field of {where}{hint}; its fields: {', '.join(fields)}"
        model = _model_of(model.model_fields[part].annotation)
    return None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The spec section a field holds (through `X | None`), or None for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def overlap_problem(paths: list[str]) -> tuple[str, str] | None:
    """Two paths of which one lies inside the other (`training` and `training.lr`): which would
    win is undefined, so a space holds neither both."""
    for a, b in itertools.permutations(paths, 2):
        if b.startswith(a + "."):
            return b, f"{b!r} lies inside {a!r}, which the space also sets whole"
    return None


def trial_spec(base: Mapping[str, Any], params: Mapping[str, Any], *, name: str) -> dict[str, Any]:
    """The job spec of a trial: `base` with each parameter set at its path (a section the base
    leaves out, or null, is started empty, so the spec's defaults fill the rest) and `name`."""
    out = copy.deepcopy(dict(base))
    for path, value in params.items():
        node = out
        *head, last = path.split(".")
        for part in head:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = copy.deepcopy(value)
    out["name"] = name
    return out


def trial_job_spec(
    base: Mapping[str, Any], params: Mapping[str, Any], *, name: str, metric: str
) -> dict[str, Any]:
    """The job spec a trial is submitted with: `trial_spec`, registered under the trial's own
    name (the search registers its best under its model_name), and, where the base spec leaves
    the checkpoint's monitored metric to its default, monitoring the objective, so the weights a
    trial keeps and registers are its best by the objective."""
    spec = trial_spec(base, params, name=name)
    spec.pop("model_name", None)
    checkpoint = spec.get("checkpoint")
    if not isinstance(checkpoint, dict):
        checkpoint = spec["checkpoint"] = {}
    if checkpoint.get("monitor") is None:
        checkpoint["monitor"] = metric
    return spec


def trial_name(search_name: str, number: int) -> str:
    """`<search name>-t<number>`, the search's name cut to fit a job name's 64 characters."""
    suffix = f"-t{number}"
    return search_name[: 64 - len(suffix)] + suffix


def grid_size(space: Space) -> int | None:
    """How many combinations a grid over `space` has (counted, never listed: an int range may
    hold billions of values); None when a parameter is a float range, which has no finite grid."""
    sizes = []
    for p in space.values():
        if isinstance(p, FloatParam):
            return None
        sizes.append(p.count() if isinstance(p, IntParam) else len(p.choices))
    return math.prod(sizes)


def grid(space: Space) -> dict[str, list[Any]]:
    """Every value of every parameter, for a grid search (Optuna's grid takes the encoded
    choices). Only for a space whose `grid_size` was checked to be finite and at most MAX_GRID:
    no parameter then holds more values than that."""
    values: dict[str, list[Any]] = {}
    for path, p in space.items():
        assert not isinstance(p, FloatParam), "a float range has no grid"
        values[path] = (
            list(p.values()) if isinstance(p, IntParam) else [encode(c) for c in p.choices]
        )
    return values


@dataclass(frozen=True)
class Probe:
    """Parameters to check a spec with, and the path to blame when it fails (None: a corner,
    where every parameter is at one of its ends)."""

    params: dict[str, Any]
    blame: str | None


def _ends(p: Param) -> list[Any]:
    """The values of `p` that its checks cover."""
    if isinstance(p, FloatParam):
        return [p.low, p.high] if p.low != p.high else [p.low]
    if isinstance(p, IntParam):
        if p.count() <= CHECK_EVERY_INT:
            return list(p.values())
        return [p.low, p.high]
    return list(p.choices)


def probes(space: Space, *, whole_grid: bool = False) -> Iterator[Probe]:
    """Parameter sets whose specs must all be valid for the space to be accepted: each value of
    `_ends` with the others at their first value (blaming that parameter), then the all-low and
    all-high corners, or with `whole_grid` every combination (a small grid search, which runs
    exactly these)."""
    ends = {path: _ends(p) for path, p in space.items()}
    first = {path: values[0] for path, values in ends.items()}
    for path, values in ends.items():
        for value in values:
            yield Probe({**first, path: value}, path)
    if whole_grid:
        paths = list(ends)
        for combo in itertools.product(*(ends[p] for p in paths)):
            yield Probe(dict(zip(paths, combo, strict=True)), None)
        return
    yield Probe(first, None)
    yield Probe({path: values[-1] for path, values in ends.items()}, None)
