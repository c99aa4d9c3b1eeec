"""A job's error is shown to whoever submitted it: the init_from and pretrained weights it names are
the user's own reference (`weights:<id>`, `name:version`) or a file name, never a server path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tas.core.data.builtin import load_digits
from tas.core.data.dataset import Arrays, DatasetInfo, LoadContext, Loaded
from tas.core.errors import TrainingError
from tas.core.hooks import NullHooks
from tas.core.models import build_model
from tas.core.pipeline import RunContext, run_pipeline
from tas.core.spec import JobSpec, ModelSpec
from tas.core.transfer import (
    WeightsMismatch,
    apply_init,
    init_problems,
    load_pretrained,
    prepare_transfer,
)

INFO10 = DatasetInfo("digits", "classification", (1, 8, 8), 10, [str(i) for i in range(10)])


def spec(init_from: str | None = "weights:w123", hidden: list[int] | None = None) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "t",
            "dataset": {"name": "digits", "val_fraction": 0.0},
            "model": {"arch": "mlp", "hidden": hidden or [16], "init_from": init_from},
            "training": {"epochs": 1, "batch_size": 64},
        }
    )


def mlp_file(path: Path, hidden: list[int]) -> Path:
    model = build_model(ModelSpec(arch="mlp", hidden=hidden), (1, 8, 8), 10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A directory standing for the server's artifact store (its path must never be shown)."""
    root = tmp_path / "srv" / "artifacts" / "uploads"
    root.mkdir(parents=True)
    return root


def assert_no_server_path(text: str, store: Path) -> None:
    assert str(store) not in text and str(store.parent) not in text, text


def test_submit_time_problems_name_the_init_from_reference(store: Path) -> None:
    gone = store / "model.safetensors"
    [msg] = init_problems(spec("weights:w123"), INFO10, 10, gone)
    assert "weights:w123" in msg
    assert_no_server_path(msg, store)

    junk = store / "junk.safetensors"
    junk.write_bytes(b"not a safetensors header")
    [msg] = init_problems(spec("digits-mlp:2"), INFO10, 10, junk)
    assert "digits-mlp:2 is not a readable safetensors file" in msg
    assert_no_server_path(msg, store)


def test_apply_init_errors_and_report_name_the_reference(store: Path) -> None:
    model = build_model(ModelSpec(arch="mlp", hidden=[16]), (1, 8, 8), 10)
    with pytest.raises(WeightsMismatch) as gone:
        apply_init(model, store / "model.safetensors", "3", label="digits-mlp:2")
    assert "digits-mlp:2" in gone.value.message
    assert_no_server_path(gone.value.message, store)

    unreadable = store / "dir.safetensors"
    unreadable.mkdir()  # an OSError other than a missing file: its text quotes the path
    with pytest.raises(WeightsMismatch) as odd:
        apply_init(model, unreadable, "3", label="weights:w1")
    assert odd.value.message == "the init_from weights of weights:w1 cannot be read: Is a directory"
    assert isinstance(odd.value.__cause__, IsADirectoryError)

    junk = store / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsMismatch) as bad:
        apply_init(model, junk, "3", label="weights:w1")
    assert bad.value.message.startswith("weights:w1 is not a readable safetensors file")
    assert_no_server_path(bad.value.message, store)

    misfit = mlp_file(store / "misfit.safetensors", [32])
    with pytest.raises(WeightsMismatch, match="init_from weights:w1 does not fit") as wrong:
        apply_init(model, misfit, "3", label="weights:w1")
    assert_no_server_path(wrong.value.message, store)

    report = apply_init(model, mlp_file(store / "fits.safetensors", [16]), "3", label="weights:w1")
    assert report["source"] == "weights:w1"


def test_without_a_label_a_file_is_named_by_its_name_only(store: Path) -> None:
    model = build_model(ModelSpec(arch="mlp", hidden=[16]), (1, 8, 8), 10)
    with pytest.raises(WeightsMismatch) as gone:
        apply_init(model, store / "model.safetensors", "3")
    assert "model.safetensors" in gone.value.message
    assert_no_server_path(gone.value.message, store)


def test_a_failing_init_from_job_shows_no_server_path(tmp_path: Path, store: Path) -> None:
    """The whole run, as the worker calls it: the job's error names `weights:w123`."""
    train = load_digits(LoadContext(Path("."))).train
    ctx = RunContext(
        job_dir=tmp_path / "job",
        datasets_dir=tmp_path,
        device="cpu",
        init_weights=store / "deleted" / "model.safetensors",
    )

    def load(_ctx: LoadContext) -> Loaded:
        return Loaded(Arrays(train.X.clone(), train.y.clone()), None)

    with pytest.raises(TrainingError) as caught:
        run_pipeline(spec("weights:w123"), INFO10, ctx, NullHooks(), load)
    error: dict[str, Any] = caught.value.to_error_dict()
    assert "weights:w123" in error["message"]
    assert_no_server_path(str(error), store)


def test_prepare_transfer_labels_the_report_with_init_from(store: Path) -> None:
    s = spec("weights:w9")
    model = build_model(s.model, (1, 8, 8), 10)
    src = mlp_file(store / "model.safetensors", [16])
    report = prepare_transfer(s.model, model, None, src, resuming=False).report
    assert report["init"]["source"] == "weights:w9"
    assert_no_server_path(str(report), store)


def test_a_broken_pretrained_file_is_named_by_its_file_name(tmp_path: Path) -> None:
    weights_dir = tmp_path / "srv" / "weights"
    weights_dir.mkdir(parents=True)
    (weights_dir / "resnet18-f37072fd.pth").write_bytes(b"garbage")
    model = build_model(ModelSpec(arch="resnet18"), (3, 8, 8), 2)
    with pytest.raises(WeightsMismatch) as bad:
        load_pretrained(model, "resnet18", weights_dir, "fc")
    assert "resnet18-f37072fd.pth (in TAS_WEIGHTS_DIR)" in bad.value.message
    assert str(weights_dir) not in bad.value.message

    torch.save({"conv1.weight": torch.zeros(1)}, weights_dir / "resnet18-f37072fd.pth")
    with pytest.raises(WeightsMismatch) as wrong:
        load_pretrained(model, "resnet18", weights_dir, "fc")
    assert str(weights_dir) not in wrong.value.message
