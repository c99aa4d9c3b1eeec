"""An upload's images are bounded by their pixels all together, read from their headers before any
is decoded (TAS_UPLOAD_MAX_TOTAL_PIXELS): PNG's own compression hides a pixel bomb from the zip's
ratio check, so a sub-MB archive of large one-colour PNGs would otherwise cost seconds of CPU and a
GB of memory per image."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from tas.core.data import images as core_images
from tas.settings import Settings
from tests.helpers.api import make_app, running_client
from tests.helpers.images import png
from tests.helpers.uploads import leftovers, make_zip, msgs, read, refused, small_upload_settings


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def header_png(side: int) -> bytes:
    """A grey PNG whose header says side×side pixels, with almost nothing behind it: what a PNG of
    one colour compresses to, PNG's own compression hiding it from the zip's ratio check."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def pixel_zip(side: int, n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(n):
            z.writestr(f"{('cats', 'dogs')[i % 2]}/{i}.png", header_png(side))
    return buf.getvalue()


def test_an_upload_of_eight_6000_square_pngs_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe that found it: a sub-MB ZIP of eight 6000×6000 PNGs (288 million pixels, each under
    the per-image limit) cost 25 s of CPU and a GB to decode; the default total refuses it."""
    settings = small_upload_settings(tmp_path).model_copy(update={"upload_max_pixels": 40_000_000})
    assert settings.upload_max_total_pixels == Settings().upload_max_total_pixels
    data = pixel_zip(6000, 8)
    assert len(data) < 100_000

    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("an image was decoded before the pixels were counted")

    # decode_pixels is where every image is decoded (decode_image reads its pixels / 255).
    monkeypatch.setattr(core_images, "decode_pixels", refuse)
    with running_client(make_app(settings)) as c:
        r = c.post("/datasets", files={"file": ("bomb.zip", data, "application/zip")})
    assert r.status_code == 413, r.text
    assert "the limit is 2e8 pixels in one upload (TAS_UPLOAD_MAX_TOTAL_PIXELS)" in msgs(r)
    assert "6000×6000" in msgs(r)
    assert leftovers(settings) == []


def test_upload_total_pixels_follow_the_setting(tmp_path: Path) -> None:
    settings = small_upload_settings(tmp_path).model_copy(update={"upload_max_total_pixels": 3_000})
    images = pixel_zip(30, 4)  # 3,600 pixels
    with running_client(make_app(settings)) as c:
        r = c.post("/datasets", files={"file": ("p.zip", images, "application/zip")})
        assert r.status_code == 413, r.text
        assert "more than 3000 pixels" in msgs(r) and "TAS_UPLOAD_MAX_TOTAL_PIXELS" in msgs(r)
        real = np.random.default_rng(0).random((4, 27, 27))  # 2,916 pixels: read
        ok = io.BytesIO()
        with zipfile.ZipFile(ok, "w") as z:
            for i, a in enumerate(real):
                z.writestr(f"{('cats', 'dogs')[i % 2]}/{i}.png", png(a))
        r = c.post("/datasets", files={"file": ("ok.zip", ok.getvalue(), "application/zip")})
        assert r.status_code in (200, 201), r.text


def test_the_core_reader_bounds_the_total_with_its_own_default(tmp_path: Path) -> None:
    """Without settings (a reader called directly) the core's own default still bounds the total,
    and images under the total are read."""
    path = tmp_path / "bomb.zip"
    path.write_bytes(pixel_zip(6000, 8))
    msg = refused(path, status=413)
    assert "more than 2.5e8 pixels" in msg and "TAS_UPLOAD_MAX_TOTAL_PIXELS" in msg
    rng = np.random.default_rng(1)
    entries = {f"{c}/{i}.png": png(rng.random((5, 5))) for c in ("a", "b") for i in range(2)}
    assert read(make_zip(tmp_path / "ok.zip", entries), max_total_pixels=100).arrays.X.shape == (
        4,
        1,
        5,
        5,
    )
    assert "more than 99 pixels" in refused(
        make_zip(tmp_path / "over.zip", entries), status=413, max_total_pixels=99
    )
