"""A damaged image is called by its own name (the archive entry, or whatever name the caller gives),
and never by the repr of the in-memory file Pillow was handed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tas.core.data.formats.upload import UploadError
from tas.core.data.images import decode_image
from tests.helpers.images import grey, image_bytes
from tests.helpers.uploads import make_zip, refused

PNG = image_bytes(grey(16, 16))
JPEG = image_bytes(np.stack([grey(16, 16)] * 3, axis=-1), "JPEG")
DAMAGED = {
    "truncated png": PNG[:60],
    "png magic then zeros": PNG[:8] + b"\0" * 64,
    "truncated jpeg": JPEG[:200],
    "jpeg header then garbage": JPEG[:20] + b"\xff" * 100,
    "empty": b"",
    "text": b"hello",
}


@pytest.mark.parametrize("kind", list(DAMAGED))
def test_decode_names_the_image(kind: str) -> None:
    with pytest.raises(UploadError) as info:
        decode_image(DAMAGED[kind], "cats/7.png", 1, (8, 8))
    msg = info.value.message
    assert "'cats/7.png'" in msg and "PNG or JPEG" in msg
    assert "BytesIO" not in msg and " at 0x" not in msg


@pytest.mark.parametrize("kind", ["truncated png", "truncated jpeg", "png magic then zeros"])
def test_a_damaged_zip_entry_is_named(tmp_path: Path, kind: str) -> None:
    ok = {f"{c}/{i}.png": PNG for c in ("cats", "dogs") for i in range(2)}
    msg = refused(make_zip(tmp_path / "a.zip", {**ok, "dogs/broken.png": DAMAGED[kind]}))
    assert "'dogs/broken.png'" in msg
    assert "BytesIO" not in msg and " at 0x" not in msg
