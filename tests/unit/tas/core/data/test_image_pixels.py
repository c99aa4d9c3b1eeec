"""An uploaded image archive (class folders, or images with an annotations CSV) is kept as the
built-in image sets are: uint8 N×C×H×W, a byte a pixel, through the scratch file, the preprocessing
cache and the batches, read as pixel / 255 per batch on the device. The numbers are those of the
float32 decode it replaced (to float rounding; a resized image to half a pixel level, where it is
rounded back to a byte), a model trained on it predicts the classes a model trained on the float32
decode does, and `/predict` decodes an image to exactly what training read from the same file."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from app.services.inputs import decode_images
from tas.core.data.archive import UploadError, UploadLimits
from tas.core.data.dataset import Arrays, DatasetInfo, Loaded, Loader, as_float
from tas.core.data.formats.upload import ParsedUpload, UploadOptions, load_upload, read_upload
from tas.core.data.images import WIDE_MODES, decode_image, decode_pixels, resize, round_pixels
from tas.core.hooks import NullHooks
from tas.core.pipeline import PipelineResult, RunContext, run_pipeline
from tas.core.predictor import Predictor
from tas.core.spec import JobSpec
from tests.helpers.images import grey, image_bytes
from tests.helpers.uploads import make_zip

HALF_LEVEL = 0.5 / 255 + 1e-6  # a resized pixel rounded back to a byte moves by half a level


def old_decode(data: bytes, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """The float32 decode uploads used before they stayed uint8 (the code as it was): [0, 1]
    straight from Pillow's bytes, resized in float, clamped."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode in WIDE_MODES:
            a = np.asarray(im, dtype=np.float32)[None] * np.float32(1 / 65535)
            np.clip(a, 0.0, 1.0, out=a)
            a = np.repeat(a, channels, axis=0) if channels == 3 else a
        elif channels == 1:
            a = np.asarray(im.convert("L"), dtype=np.float32)[None] * np.float32(1 / 255)
        else:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) * np.float32(1 / 255)
            a = rgb.transpose(2, 0, 1)
    if size is not None and a.shape[1:] != tuple(size):
        a = resize(torch.from_numpy(np.ascontiguousarray(a))[None], size)[0].clamp_(0, 1).numpy()
    return a


def encoded(a: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(a)
    (im.convert(mode) if mode else im).save(buf, fmt)
    return buf.getvalue()


def mixed_images(h: int = 9, w: int = 7) -> dict[str, bytes]:
    """One of each kind Pillow decodes differently: grey, RGB, RGBA, palette, 16-bit grey, JPEG."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    wide = io.BytesIO()
    Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).save(wide, "PNG")
    return {
        "a/grey.png": image_bytes(grey(h, w, seed=1)),
        "a/rgb.png": image_bytes(rgb),
        "a/rgba.png": encoded(rgb, "RGBA"),
        "b/palette.png": encoded(rgb, "P"),
        "b/wide.png": wide.getvalue(),
        "b/photo.jpg": image_bytes(rgb, "JPEG"),
    }


def parse(path: Path, **options: object) -> ParsedUpload:
    return read_upload(path, path.name, UploadOptions.from_dict(dict(options)), UploadLimits())


@pytest.mark.parametrize("size", [None, (5, 4), (12, 10)])
def test_an_archive_decodes_to_uint8_with_the_old_float_numbers(
    tmp_path: Path, size: tuple[int, int] | None
) -> None:
    entries = mixed_images()
    path = make_zip(tmp_path / "mixed.zip", entries)
    got = parse(path, **({"size": list(size)} if size else {}))
    X = got.arrays.X
    h, w = size or (9, 7)
    assert X.dtype == torch.uint8 and X.shape == (6, 3, h, w) and X.is_contiguous()
    names = sorted(entries)  # class, then file name: the rows' order
    old = torch.from_numpy(np.stack([old_decode(entries[n], 3, size) for n in names]))
    eight_bit = [i for i, n in enumerate(names) if n != "b/wide.png"]
    diff = (as_float(X) - old).abs()
    if size is None:
        # 8-bit images: the very bytes, so pixel / 255 is the old float to float rounding.
        assert float(diff[eight_bit].max()) <= 1e-6
        assert float(diff.max()) <= HALF_LEVEL  # 16-bit grey is rounded to 8 bits once
    else:
        # Resampled as before (bilinear, antialiased), then rounded once to a byte.
        assert float(diff.max()) <= HALF_LEVEL
        pixels = [torch.from_numpy(decode_pixels(entries[n], n, 3)) for n in names]
        again = torch.stack([round_pixels(resize(p[None], size)[0]) for p in pixels])
        assert torch.equal(X[eight_bit], again[eight_bit])


def test_annotations_archives_keep_uint8_in_the_csv_order(tmp_path: Path) -> None:
    images = {f"images/{i}.png": image_bytes(grey(seed=i)) for i in range(6)}
    rows = "file,label\n" + "".join(f"{i}.png,{'ab'[i % 2]}\n" for i in (4, 1, 0, 5, 2, 3, 1))
    got = parse(make_zip(tmp_path / "ann.zip", {"labels.csv": rows.encode(), **images}))
    X = got.arrays.X
    assert X.dtype == torch.uint8 and X.shape == (7, 1, 6, 5)
    want = torch.stack([torch.from_numpy(grey(seed=i))[None] for i in (4, 1, 0, 5, 2, 3, 1)])
    assert torch.equal(X, want)  # an image named twice fills both rows


def test_predict_decodes_an_image_to_what_training_read(tmp_path: Path) -> None:
    """`/predict`'s decoder reads the same bytes training stored, as pixel / 255 by `as_float`: the
    model's normalisation then sees the same numbers, resized or not."""
    entries = mixed_images()
    names = sorted(entries)
    for size in (None, (5, 4)):
        path = make_zip(tmp_path / f"m{size}.zip", entries)
        X = parse(path, **({"size": list(size)} if size else {})).arrays.X
        served = decode_images([entries[n] for n in names], tuple(X.shape[1:]), max_pixels=10**6)
        assert served.dtype == np.float32
        assert torch.equal(torch.from_numpy(served), as_float(X))
        one = decode_image(entries[names[0]], "x.png", 3, (int(X.shape[2]), int(X.shape[3])))
        assert torch.equal(torch.from_numpy(one), as_float(X[0]))


def test_the_size_limit_counts_a_byte_a_pixel(tmp_path: Path) -> None:
    path = make_zip(
        tmp_path / "s.zip", {f"{c}/{i}.png": image_bytes(grey()) for c in "ab" for i in "12"}
    )
    nbytes = 4 * 1 * 6 * 5  # four 6×5 grey images, uint8
    assert parse_limits(path, nbytes).arrays.X.shape == (4, 1, 6, 5)
    with pytest.raises(UploadError, match=r"take 120 B as uint8") as err:
        parse_limits(path, nbytes - 1)
    assert err.value.status == 413


def parse_limits(path: Path, max_array_bytes: int) -> ParsedUpload:
    return read_upload(
        path, path.name, UploadOptions(), UploadLimits(max_array_bytes=max_array_bytes)
    )


def test_decoding_an_archive_holds_about_one_image(tmp_path: Path) -> None:
    """Each image goes to the scratch file as it is decoded: numpy's allocations while reading an
    archive of 6 MB of pixels (24 MB as float32) peak far below the array."""
    rng = np.random.default_rng(0)
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(500):
            zf.writestr(
                f"{'ab'[i % 2]}/{i}.png",
                image_bytes(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
            )
    tracemalloc.start()
    try:
        X = parse(path).arrays.X
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert X.dtype == torch.uint8 and X.shape == (500, 3, 64, 64)
    assert peak < X.numel() // 4, f"peak {peak:,} B for a {X.numel():,} B array"


# ---------------------------------------------------------------------------------------------
# Through training, the preprocessing cache and the predictor


COLOURS = np.array([[40, 40, 200], [200, 40, 40], [40, 200, 40], [200, 200, 200]])


def learnable_archive(path: Path, n: int) -> tuple[Path, dict[str, bytes], np.ndarray]:
    """n 10×10 RGB PNGs in four class folders, each class a mean colour plus noise."""
    rng = np.random.default_rng(0)
    entries: dict[str, bytes] = {}
    for i in range(n):
        k = i % 4
        img = COLOURS[k][None, None, :] + rng.normal(0, 40, (10, 10, 3))
        entries[f"c{k}/{i:04d}.png"] = image_bytes(np.clip(img, 0, 255).astype(np.uint8))
    names = sorted(entries)
    labels = np.array([int(n[1]) for n in names])
    return make_zip(path, entries), entries, labels


def train(
    tmp_path: Path, job: str, info: DatasetInfo, load: Loader, fingerprint: str
) -> PipelineResult:
    spec = JobSpec.model_validate(
        {
            "name": job,
            "dataset": {"id": "pets", "val_fraction": 0.2},
            "model": {"arch": "cnn", "channels": [8]},
            "training": {"epochs": 3, "batch_size": 32, "lr": 0.01, "seed": 1},
        }
    )
    ctx = RunContext(
        job_dir=tmp_path / job,
        datasets_dir=tmp_path,
        device="cpu",
        cache_dir=tmp_path / "cache",
        data_fingerprint=fingerprint,
    )
    result = run_pipeline(spec, info, ctx, NullHooks(), load=load)
    assert result.status == "succeeded", result
    return result


def test_a_model_trained_on_an_archive_caches_uint8_and_predicts_as_the_float_decode_did(
    tmp_path: Path,
) -> None:
    path, entries, labels = learnable_archive(tmp_path / "pets.zip", 240)
    parsed = read_upload(path, path.name, UploadOptions(size=(8, 8)), UploadLimits())
    schema, info = parsed.schema(), parsed.info("pets")
    new = train(tmp_path, "uint8", info, lambda _ctx: load_upload(path, path.name, schema), "up:1")
    (entry,) = list((tmp_path / "cache").rglob("tensors.safetensors"))
    inputs = {k: v for k, v in load_file(entry).items() if k.endswith("X")}
    assert inputs and all(v.dtype == torch.uint8 and v.dim() == 4 for v in inputs.values())
    assert all(tuple(v.shape[1:]) == (3, 8, 8) for v in inputs.values())

    # The same images decoded as uploads were before: float32 in [0, 1], resized in float.
    names = sorted(entries)
    old_X = torch.from_numpy(np.stack([old_decode(entries[n], 3, (8, 8)) for n in names]))
    y = torch.as_tensor(labels)
    old = train(tmp_path, "float", info, lambda _ctx: Loaded(Arrays(old_X, y)), "up:float")
    assert new.final_metrics["val_accuracy"] > 0.9

    now = Predictor.from_dir(new.model_local_dir or "")
    before = Predictor.from_dir(old.model_local_dir or "")
    served = decode_images([entries[n] for n in names], (3, 8, 8), max_pixels=10**6)
    assert float(np.abs(served - old_X.numpy()).max()) <= HALF_LEVEL
    # What a client sends: the images themselves (the new model), or, before, the float decode.
    got = now.predict(served)
    was = before.predict(old_X.numpy())
    assert [p["label"] for p in got] == [p["label"] for p in was]
    assert np.mean([p["label"] for p in got] == labels) > 0.9
    probs_now = np.array([p["probabilities"] for p in got])
    probs_was = np.array([p["probabilities"] for p in was])
    assert float(np.abs(probs_now - probs_was).max()) < 0.05
