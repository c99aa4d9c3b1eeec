"""The core's job runner over a temp job directory (tests/helpers/pipeline.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.pipeline import RunJob, job_runner


@pytest.fixture
def run_job(tmp_path: Path) -> RunJob:
    """run_job(spec_dict, job="a", hooks=None, load=None, **ctx) → PipelineResult, on the CPU."""
    return job_runner(tmp_path)
