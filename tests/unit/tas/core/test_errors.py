"""Failures reach the worker as {type, message, hint, stage}."""

from __future__ import annotations

import pytest
import torch

from tas.core.data.dataset import DatasetUnavailable
from tas.core.errors import OutOfMemory, Stopped, TrainingError, as_training_error
from tests.helpers.pipeline import RunJob


def test_missing_dataset_fails_in_collect_with_where_to_put_files(run_job: RunJob) -> None:
    with pytest.raises(TrainingError) as info:
        run_job({"dataset": {"name": "fashion_mnist"}})
    err = info.value.to_error_dict()
    assert err["type"] == "DatasetUnavailable" and err["stage"] == "collect"
    assert "FashionMNIST/raw" in err["message"] and "t10k-labels-idx1-ubyte" in err["message"]
    assert "TAS_ALLOW_DOWNLOAD" in err["hint"]


def test_mapping() -> None:
    e = as_training_error(DatasetUnavailable("no files in /x"), "collect")
    assert (e.type, e.stage, e.message) == ("DatasetUnavailable", "collect", "no files in /x")
    oom = as_training_error(torch.OutOfMemoryError("CUDA out of memory.\nmore"), "evaluate")
    assert isinstance(oom, OutOfMemory) and oom.stage == "evaluate"
    assert oom.message == "out of memory on the training device: CUDA out of memory."
    other = as_training_error(KeyError("boom"), "train").to_error_dict()
    assert other == {"type": "KeyError", "message": "'boom'", "hint": None, "stage": "train"}
    keep = TrainingError("x", hint="y", type="Custom")
    assert as_training_error(keep, "register") is keep and keep.stage == "register"


def test_stop_reasons_are_checked() -> None:
    assert Stopped("preempted").reason == "preempted"
    with pytest.raises(ValueError, match="unknown stop reason"):
        Stopped("tired")
