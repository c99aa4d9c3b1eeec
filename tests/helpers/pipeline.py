"""The core's pipeline under test: hooks that record every call, and a job runner over a temp job
directory on the CPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tas.core.checkpoint import CheckpointRecord
from tas.core.data.dataset import LoadContext, Loaded
from tas.core.data.registry import BUILTIN_DATASETS
from tas.core.hooks import NullHooks, Progress
from tas.core.pipeline import PipelineResult, RunContext, run_pipeline
from tas.core.spec import JobSpec


class RecordingHooks(NullHooks):
    """Records every call. `stop_at=(n, reason)`: the n-th `should_stop` call inside the train stage
    (1-based: the n-th step boundary) and every later call answer `reason`, as the worker's flag
    would. `stop_checks` counts the calls inside the train stage."""

    def __init__(self, stop_at: tuple[int, str] | None = None) -> None:
        self.stages: list[tuple[str, str, dict[str, Any] | None]] = []
        self.epochs: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.checkpoints: list[CheckpointRecord] = []
        self.progress_calls: list[Progress] = []
        self.stop_at = stop_at
        self.stop_checks = 0
        self.stopping = False
        self.training = False

    def stage_started(self, name: str) -> None:
        self.stages.append(("started", name, None))
        self.training = name == "train"

    def stage_finished(self, name: str, outputs: dict[str, Any]) -> None:
        self.stages.append(("finished", name, outputs))
        self.training = False

    def progress(self, progress: Progress) -> None:
        self.progress_calls.append(progress)

    def epoch_end(self, row: dict[str, Any]) -> None:
        self.epochs.append(row)

    def step_logged(self, row: dict[str, Any]) -> None:
        self.steps.append(row)

    def checkpoint_saved(self, record: CheckpointRecord) -> None:
        self.checkpoints.append(record)

    def should_stop(self) -> str | None:
        if self.training:
            self.stop_checks += 1
            if self.stop_at is not None and self.stop_checks >= self.stop_at[0]:
                self.stopping = True
        return self.stop_at[1] if self.stopping and self.stop_at else None

    def outputs(self, stage: str) -> dict[str, Any]:
        return (
            next(o for kind, name, o in self.stages if kind == "finished" and name == stage) or {}
        )


RunJob = Callable[..., PipelineResult]


def job_runner(tmp_path: Path) -> RunJob:
    """run(spec_dict, job="a", hooks=None, load=None, **ctx) → PipelineResult, on the CPU, each job
    in its own directory under `tmp_path` and the datasets under `tmp_path/datasets`."""

    def run(
        spec: dict[str, Any],
        job: str = "job",
        hooks: Any = None,
        load: Callable[[LoadContext], Loaded] | None = None,
        **ctx: Any,
    ) -> PipelineResult:
        js = JobSpec.model_validate({"name": "t", **spec})
        source = BUILTIN_DATASETS[js.dataset.name or ""]
        context = RunContext(
            job_dir=tmp_path / job, datasets_dir=tmp_path / "datasets", device="cpu", **ctx
        )
        return run_pipeline(js, source.info, context, hooks or NullHooks(), load or source.load)

    return run
