"""The evaluate stage writes each held-out sample's index in the data, its true label and the
prediction, from the registered weights."""

from __future__ import annotations

import csv
import io
import mmap
from pathlib import Path

import numpy as np
import pytest
import torch

from tas.core import predictions
from tas.core.data.dataset import LoadContext
from tas.core.data.registry import BUILTIN_DATASETS
from tas.core.predictor import Predictor
from tests.helpers.pipeline import RunJob


def test_held_out_predictions_by_source_index(run_job: RunJob, tmp_path: Path) -> None:
    result = run_job(
        {
            "dataset": {"name": "wine", "val_fraction": 0.2, "test_fraction": 0.2},
            "model": {"arch": "mlp", "hidden": [16]},
            "training": {"epochs": 5, "optimizer": "adam", "lr": 1e-2},
        },
        job="wine",
    )
    assert result.predictions == {"val": 36, "test": 36}
    source = BUILTIN_DATASETS["wine"]
    data = source.load(LoadContext(tmp_path / "datasets")).train
    names = source.info.class_names
    val = predictions.read(predictions.path_for(tmp_path / "wine", "val"))
    test = predictions.read(predictions.path_for(tmp_path / "wine", "test"))
    # Disjoint rows of the original data, each with its own true label.
    assert not set(val["index"].tolist()) & set(test["index"].tolist())
    for split in (val, test):
        assert split["index"].dtype == np.int64
        assert np.array_equal(split["label"], data.y[torch.from_numpy(split["index"])].numpy())
        assert ((split["probability"] > 0) & (split["probability"] <= 1)).all()
    # The evaluated split's metrics are these predictions' (the same forward pass).
    ev = result.evaluation
    assert ev is not None and ev["split"] == "test"
    rows = predictions.rows(test)
    assert sum(r["correct"] for r in rows) / len(rows) == ev["metrics"]["accuracy"]
    assert rows[0]["class_name"] == (names[rows[0]["label"]] if names else None)
    # The registered model predicts the same classes for those rows (raw samples in).
    served = Predictor.from_dir(result.model_dir or "").predict(
        data.X[torch.from_numpy(test["index"])].numpy()
    )
    assert [p["label"] for p in served] == test["predicted"].tolist()

    table = list(csv.DictReader(io.StringIO(predictions.to_csv(test))))
    assert [int(r["index"]) for r in table] == test["index"].tolist()
    assert [r["correct"] == "true" for r in table] == [r["correct"] for r in rows]
    assert [float(r["probability"]) for r in table] == [r["probability"] for r in rows]


def _base(array: np.ndarray) -> object:
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_a_split_is_mapped_and_read_by_slices(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 10
    splits = {
        "val": {
            "index": rng.permutation(n).astype(np.int64),
            "label": rng.integers(0, 3, n).astype(np.int64),
            "predicted": rng.integers(0, 3, n).astype(np.int64),
            "probability": rng.random(n).astype(np.float32),
            "class_names": np.asarray(["a", "bb", "ccc"]),
        },
        "test": {  # two target columns
            "index": np.arange(n, dtype=np.int64),
            "value": rng.random((n, 2)),
            "predicted": rng.random((n, 2)),
        },
    }
    predictions.write_all(tmp_path, splits)
    for split, arrays in splits.items():
        path = predictions.path_for(tmp_path, split)
        mapped = predictions.open_split(path)
        # Views of the mapped file, not copies: a page reads only its rows.
        assert all(isinstance(_base(a), mmap.mmap) for a in mapped.values())
        whole = predictions.read(path)
        assert mapped.keys() == whole.keys() == arrays.keys()
        for k, a in arrays.items():
            assert np.array_equal(mapped[k], a) and mapped[k].dtype == a.dtype
        assert predictions.count(mapped) == n
        every = predictions.rows(whole)
        assert predictions.rows(mapped, 3, 7) == every[3:7]
        assert predictions.rows(mapped, 8, 20) == every[8:] and predictions.rows(mapped, 12) == []
        chunks = list(predictions.iter_csv(mapped, block=4))
        assert len(chunks) == 1 + 3  # the header, then 4 + 4 + 2 rows
        assert "".join(chunks) == predictions.to_csv(whole)
        lines = predictions.to_csv(whole).splitlines(keepends=True)
        assert "".join(predictions.iter_csv(mapped, 6)) == lines[0] + "".join(lines[1 + 6 :])
        assert "".join(predictions.iter_csv(mapped, 2, 5)) == lines[0] + "".join(lines[3:6])
    table = list(csv.DictReader(io.StringIO(predictions.to_csv(splits["test"]))))
    assert list(table[0]) == [
        "index",
        "value_0",
        "value_1",
        "predicted_0",
        "predicted_1",
        "error_0",
        "error_1",
    ]
    for row, r in zip(predictions.rows(splits["test"]), table, strict=True):
        assert [float(r["value_0"]), float(r["value_1"])] == row["value"]
        assert [float(r["error_0"]), float(r["error_1"])] == row["error"]


def test_a_compressed_file_is_read_whole_and_a_bad_one_refused(tmp_path: Path) -> None:
    arrays = {"index": np.arange(5, dtype=np.int64), "value": np.ones((5, 1))}
    np.savez_compressed(tmp_path / "packed.npz", **arrays)  # type: ignore[arg-type]
    got = predictions.open_split(tmp_path / "packed.npz")
    assert all(np.array_equal(got[k], a) for k, a in arrays.items())

    # An object array (a pickle inside) is refused, never unpickled.
    np.savez(tmp_path / "objects.npz", index=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="holds Python objects"):
        predictions.open_split(tmp_path / "objects.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match=r"text\.npz: File is not a zip file"):
        predictions.open_split(tmp_path / "text.npz")
    whole = (tmp_path / "packed.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz: "):
        predictions.open_split(tmp_path / "cut.npz")
    with pytest.raises(FileNotFoundError):
        predictions.open_split(tmp_path / "none.npz")
