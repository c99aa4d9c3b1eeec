"""An uploaded NPZ whose X is a uint8 image array stays uint8 (a byte a pixel) from the decode through
the scratch file, the preprocessing cache and the batches, and is read as the built-in image sets
are: pixel / 255, then the dataset's normalisation; `/predict` takes pixel / 255. Every other X is
cast to float32 as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tas.core.data.archive import UploadError, UploadLimits
from tas.core.data.formats import npz
from tas.core.data.formats.upload import UploadOptions, load_upload, read_upload
from tas.core.data.images import resize
from tas.core.data.prepare import InputTransform, Normalizer
from tas.core.hooks import NullHooks
from tas.core.pipeline import RunContext, run_pipeline
from tas.core.predictor import Predictor
from tas.core.spec import JobSpec


def learnable_pixels(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """N×3×8×8 uint8 images whose class sets their mean colour, plus noise: learnable in a few
    epochs, and spanning the whole 0..255 range."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    colours = np.array([[40, 40, 200], [200, 40, 40], [40, 200, 40], [200, 200, 200]])
    X = colours[y][:, :, None, None] + rng.normal(0, 40, (n, 3, 8, 8))
    return np.clip(X, 0, 255).astype(np.uint8), y


def read(path: Path, **options: object) -> object:
    return read_upload(path, path.name, UploadOptions.from_dict(dict(options)), UploadLimits())


def test_uint8_images_stay_uint8_whole_or_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y = learnable_pixels(30)
    np.savez(tmp_path / "chw.npz", X=X, y=y)
    np.savez(tmp_path / "hw.npz", X=X[:, 0], y=y)
    np.savez(tmp_path / "fortran.npz", X=np.asfortranarray(X), y=y)
    for name, want in [("chw.npz", X), ("hw.npz", X[:, :1]), ("fortran.npz", X)]:
        for chunk in (1, 1 << 30):  # one sample a piece, and all at once
            monkeypatch.setattr(npz, "CHUNK_BYTES", chunk)
            got = read(tmp_path / name)
            assert got.arrays.X.dtype == torch.uint8, name  # type: ignore[attr-defined]
            assert torch.equal(got.arrays.X, torch.from_numpy(want)), name  # type: ignore[attr-defined]
            assert got.kind == "image"  # type: ignore[attr-defined]


def test_other_arrays_are_float32_as_before(tmp_path: Path) -> None:
    X, y = learnable_pixels(12)
    cases = {
        "features.npz": X.reshape(12, -1)[:, :5],  # uint8 features (N×F): not pixels
        "float_images.npz": X.astype(np.float32) / 255,
        "int16_images.npz": X.astype(np.int16),
    }
    for name, arr in cases.items():
        np.savez(tmp_path / name, X=arr, y=y)
        got = read(tmp_path / name).arrays.X  # type: ignore[attr-defined]
        assert got.dtype == torch.float32, name
        assert torch.equal(got.reshape(arr.shape), torch.from_numpy(arr.astype(np.float32))), name


def test_resized_uint8_images_stay_uint8_and_round_the_float_resize(tmp_path: Path) -> None:
    X, y = learnable_pixels(10)
    np.savez(tmp_path / "img.npz", X=X, y=y)
    got = read(tmp_path / "img.npz", size=[5, 4]).arrays.X  # type: ignore[attr-defined]
    assert got.dtype == torch.uint8 and got.shape == (10, 3, 5, 4)
    exact = resize(torch.from_numpy(X).float(), (5, 4))
    assert float((got.float() - exact).abs().max()) <= 0.5


def test_the_size_limit_counts_a_byte_a_pixel(tmp_path: Path) -> None:
    X, y = learnable_pixels(16)
    np.savez(tmp_path / "img.npz", X=X, y=y)
    limits = UploadLimits(max_array_bytes=X.nbytes)  # a quarter of what float32 would take
    assert read_upload(tmp_path / "img.npz", "img.npz", UploadOptions(), limits).arrays.X.shape
    with pytest.raises(UploadError, match="as uint8"):
        read_upload(
            tmp_path / "img.npz", "img.npz", UploadOptions(), UploadLimits(max_array_bytes=100)
        )


def test_a_uint8_npz_trains_caches_uint8_and_predicts_from_pixel_over_255(tmp_path: Path) -> None:
    X, y = learnable_pixels(400)
    path = tmp_path / "pixels.npz"
    np.savez(path, X=X, y=y)
    parsed = read_upload(path, path.name, UploadOptions(), UploadLimits())
    schema = parsed.schema()
    spec = JobSpec.model_validate(
        {
            "name": "t",
            "dataset": {"id": "pixels", "val_fraction": 0.2},
            "model": {"arch": "cnn", "channels": [8]},
            "training": {"epochs": 4, "batch_size": 32, "lr": 0.01, "seed": 1},
        }
    )
    ctx = RunContext(
        job_dir=tmp_path / "job",
        datasets_dir=tmp_path,
        device="cpu",
        cache_dir=tmp_path / "cache",
        data_fingerprint="upload:pixels",
    )
    result = run_pipeline(
        spec,
        parsed.info("pixels"),
        ctx,
        NullHooks(),
        load=lambda _ctx: load_upload(path, path.name, schema),
    )
    assert result.status == "succeeded"
    assert result.final_metrics["val_accuracy"] > 0.9
    # The preprocessing cache holds the splits as bytes.
    (entry,) = list((tmp_path / "cache").rglob("tensors.safetensors"))
    tensors = load_file(entry)
    inputs = [k for k in tensors if k.endswith("X")]
    assert inputs and all(tensors[k].dtype == torch.uint8 for k in inputs)
    # /predict's input is pixel / 255 (the scale images are decoded to): the model's own
    # preprocessing gives the numbers training gave, whose decode of uint8 was as_float.
    predictor = Predictor.from_dir(result.model_local_dir or "")
    scaled = X[:50].astype(np.float32) / np.float32(255)
    labels = [p["label"] for p in predictor.predict(scaled)]
    assert np.mean(np.array(labels) == y[:50]) > 0.9
    model = predictor.model
    transform = InputTransform(Normalizer.from_dict(predictor.card.normalization or {}))
    with torch.inference_mode():
        trained_view = model(transform(torch.from_numpy(X[:50])))
    assert torch.equal(predictor.forward(scaled), trained_view.float())
