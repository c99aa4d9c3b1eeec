"""Decoding uploaded images: PNG and JPEG only, straight from memory or a zip entry, into uint8
C×H×W pixels (`decode_pixels`), read as pixel / 255 (`decode_image`, `dataset.as_float`).

An archive's images are kept as the built-in image sets are, a byte a pixel: a quarter of float32's
bytes in the scratch file, the preprocessing cache and memory, decoded to [0, 1] and normalised per
batch on the training device. A resized image is resampled from its pixel values (bilinear,
antialiased, in float) and rounded once back to whole pixel values, so it differs from the float
resize by at most half a level (0.5 / 255); 16-bit grey is scaled to 0..255 and rounded the same way.

Pillow is told to try no format but PNG and JPEG (no other parser ever sees user bytes), and every
image is judged from its lazily-read header (size, mode) before `load()` decodes it, so a pixel bomb
costs a header read. A set of images is read in two passes: headers first (channels, one common size,
the final array's bytes, all known before anything is decoded), then one N×C×H×W array, a
memory-mapped uint8 scratch file, is filled in archive order an image at a time. `decode_pixels` is
the one place an image becomes a tensor, so an upload and a later `/predict` image are decoded,
resized and rounded the same way (`/predict` then reads them as pixel / 255, as training does)."""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from tas.core.data.archive import UploadError, UploadLimits, nbytes, num, read_entry
from tas.core.data.dataset import as_float
from tas.core.data.scratch import ScratchArray

FORMATS = ("PNG", "JPEG")
SUFFIXES = (".png", ".jpg", ".jpeg")
#: Modes with one channel. Any other (RGB, RGBA, P, CMYK, …) counts as colour: a palette is colour
#: even when its entries happen to be grey, because telling needs the decoded palette.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"})
#: 16-bit grey (PNG): scaled by 65535, not clipped to 8 bits by a convert("L").
WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
#: What other common image files start with, to name them when refused.
_MAGIC = (
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WebP/RIFF"),
    (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
    (b"8BPS", "Photoshop"),
    (b"%PDF", "PDF"),
)
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
#: How Pillow names an in-memory file in its messages (`<_io.BytesIO object at 0x7f…>`).
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
#: Errors Pillow raises for damaged or truncated files, besides its own.
_BROKEN = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, zipfile.BadZipFile)


def _reason(exc: BaseException) -> str:
    """Pillow's message without the in-memory file's repr: the error names the image itself."""
    return _OBJECT_REPR.sub("the file", str(exc)).strip() or type(exc).__name__


def is_image_name(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


@dataclass(frozen=True)
class ImageHeader:
    name: str
    height: int
    width: int
    grey: bool


def _pixel_error(name: str, height: int, width: int, limit: int) -> UploadError:
    return UploadError(
        f"image {name!r} is {height}×{width} = {num(height * width)} pixels; the limit is {num(limit)}",
        status=413,
    )


def _looks_like(fp: IO[bytes]) -> str:
    try:
        fp.seek(0)
        head = fp.read(16)
    except _BROKEN:
        return "unrecognised content"
    return next(
        (f"a {kind} file" for magic, kind in _MAGIC if head.startswith(magic)),
        "unrecognised content",
    )


def open_image(fp: IO[bytes], name: str, max_pixels: int) -> Image.Image:
    """The image with only its header read; refused past `max_pixels` (413) or when not PNG/JPEG."""
    try:
        im = Image.open(fp, formats=FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, above ours by default
        m = _BOMB_PIXELS.search(str(exc))
        size = f"{num(int(m.group(1)))} pixels" if m else "too many pixels"
        ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = (
            f"{num(max_pixels)}"
            if max_pixels <= ceiling
            else f"{num(ceiling)} (Pillow's decompression-bomb guard)"
        )
        raise UploadError(f"image {name!r} is {size}; the limit is {limit}", status=413) from None
    except UnidentifiedImageError:
        raise UploadError(
            f"image {name!r} is not a PNG or JPEG image ({_looks_like(fp)}); allowed: PNG, JPEG",
            hint="convert the images to PNG or JPEG, or remove the file from the archive",
        ) from None
    except _BROKEN as exc:
        raise UploadError(
            f"image {name!r} is not a readable PNG or JPEG image: {_reason(exc)}"
        ) from None
    width, height = im.size
    if width * height > max_pixels:
        raise _pixel_error(name, height, width, max_pixels)
    return im


def probe_image(fp: IO[bytes], name: str, max_pixels: int) -> ImageHeader:
    """Size and grey/colour from the header alone (nothing is decoded)."""
    with open_image(fp, name, max_pixels) as im:
        return ImageHeader(name, im.size[1], im.size[0], im.mode in GREY_MODES)


def _levels(im: Image.Image, channels: int) -> np.ndarray:
    """C×h×w pixel values on the 8-bit scale: grey as one channel, colour as RGB (alpha dropped).
    8-bit images are their bytes (uint8); 16-bit grey is float32 in [0, 255] (value × 255 / 65535),
    rounded by the caller once, after any resize, so it is quantised only once."""
    if im.mode in WIDE_MODES:
        a = np.asarray(im, dtype=np.float32)[None] * np.float32(255 / 65535)
        np.clip(a, 0.0, 255.0, out=a)
        return np.repeat(a, channels, axis=0) if channels == 3 else a
    if channels == 1:
        return np.asarray(im.convert("L"), dtype=np.uint8)[None]
    return np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


def round_pixels(x: torch.Tensor) -> torch.Tensor:
    """Float pixel values (0..255 scale) → uint8, rounded to the nearest level (ties to even) and
    clamped: how a resized image goes back to a byte a pixel."""
    return x.round().clamp_(0, 255).to(torch.uint8)


def resize(x: torch.Tensor, size: tuple[int, int], chunk: int = 256) -> torch.Tensor:
    """N×C×h×w → N×C×H×W float32, bilinear with antialiasing (so shrinking does not alias), in
    chunks so the temporaries stay small. Any dtype in (uint8 pixels are resampled as their
    values); used for one decoded image and for whole NPZ image arrays alike."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], *size), dtype=torch.float32)
    for i in range(0, x.shape[0], chunk):
        out[i : i + chunk] = F.interpolate(
            x[i : i + chunk].float(),
            size=size,
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    return out


def decode_pixels(
    data: bytes | IO[bytes],
    name: str,
    channels: int,
    size: tuple[int, int] | None = None,
    max_pixels: int = UploadLimits.max_pixels,
) -> np.ndarray:
    """One PNG/JPEG → uint8 C×H×W pixels (`channels` 1 or 3), resized to `size` (H, W) if given
    (resampled in float, then rounded: `round_pixels`). Every failure is an `UploadError` that
    names the image."""
    fp = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    with open_image(fp, name, max_pixels) as im:
        try:
            im.load()
            a = _levels(im, channels)
        except Image.DecompressionBombError as exc:
            raise UploadError(f"image {name!r}: {_reason(exc)}", status=413) from None
        except _BROKEN as exc:
            raise UploadError(
                f"image {name!r} is a damaged PNG or JPEG image: {_reason(exc)}"
            ) from None
    if size is not None and a.shape[1:] != tuple(size):
        a = resize(torch.from_numpy(np.ascontiguousarray(a))[None], size)[0].numpy()
    if a.dtype != np.uint8:
        a = round_pixels(torch.from_numpy(a)).numpy()
    return a


def decode_image(
    data: bytes | IO[bytes],
    name: str,
    channels: int,
    size: tuple[int, int] | None = None,
    max_pixels: int = UploadLimits.max_pixels,
) -> np.ndarray:
    """One PNG/JPEG → float32 C×H×W in [0, 1]: `decode_pixels` read as pixel / 255 by the same
    operations training uses on a batch (`as_float`), so a `/predict` image reaches the model's
    normalisation as the same numbers a training image of the same file did."""
    pixels = decode_pixels(data, name, channels, size, max_pixels)
    return as_float(torch.from_numpy(np.ascontiguousarray(pixels))).numpy()


def common_shape(
    headers: Sequence[ImageHeader], size: tuple[int, int] | None
) -> tuple[int, int, int]:
    """(C, H, W) of the stacked images: C=1 when all are grey, else 3; H×W from `size`, or the one
    size they all share (different sizes without `size` are an error naming two of them)."""
    channels = 1 if all(h.grey for h in headers) else 3
    if size is not None:
        return channels, size[0], size[1]
    first = headers[0]
    odd = next((h for h in headers if (h.height, h.width) != (first.height, first.width)), None)
    if odd is not None:
        raise UploadError(
            f"images have different sizes, H×W ({first.name} {first.height}×{first.width},"
            f" {odd.name} {odd.height}×{odd.width}); give size to resize them",
            field="size",
            hint="give size as 'HxW' (e.g. 32x32) or one number for a square",
        )
    return channels, first.height, first.width


def read_images(
    zf: zipfile.ZipFile,
    entries: Sequence[zipfile.ZipInfo],
    size: tuple[int, int] | None,
    limits: UploadLimits,
) -> np.ndarray:
    """The entries as one uint8 N×C×H×W array (a byte a pixel, read as pixel / 255 per batch), row
    i from entries[i] (an entry listed twice is decoded once). Headers are checked first (each image's pixels, then all images' together), then
    the array's bytes, then images are decoded in archive order (the zip is read front to back)."""
    unique: dict[str, zipfile.ZipInfo] = {}
    for info in entries:
        unique.setdefault(info.filename, info)
    headers: dict[str, ImageHeader] = {}
    pixels = 0
    for name, info in unique.items():
        try:
            with zf.open(info) as fp:
                header = headers[name] = probe_image(fp, name, limits.max_pixels)
        except _BROKEN as exc:
            raise UploadError(f"entry {name!r} cannot be read: {_reason(exc)}") from None
        pixels += header.height * header.width
        if pixels > limits.max_total_pixels:
            raise UploadError(
                f"the images decode to more than {num(limits.max_total_pixels)} pixels (passed at"
                f" {name!r}, {header.height}×{header.width}); the limit is"
                f" {num(limits.max_total_pixels)} pixels in one upload (TAS_UPLOAD_MAX_TOTAL_PIXELS)",
                status=413,
                hint="downscale the images before uploading, or upload fewer",
            )
    channels, height, width = common_shape(list(headers.values()), size)
    total = len(entries) * channels * height * width  # uint8: a byte a pixel and channel
    if total > limits.max_array_bytes:
        raise UploadError(
            f"{len(entries):,} images of {channels}×{height}×{width} take {nbytes(total)} as uint8;"
            f" the limit is {nbytes(limits.max_array_bytes)}",
            status=413,
            hint="give a smaller size, or upload fewer images",
        )
    rows: dict[str, list[int]] = {}
    for i, info in enumerate(entries):
        rows.setdefault(info.filename, []).append(i)
    # Decoded images go to a memory-mapped scratch file one at a time: an archive whose images
    # decode to more than memory holds one image, and the API (which only needs the schema) never
    # reads them back.
    near = Path(zf.filename) if isinstance(zf.filename, str) else None
    with ScratchArray((channels, height, width), np.uint8, near=near) as X:
        for name, info in sorted(unique.items(), key=lambda kv: kv[1].header_offset):
            image = decode_pixels(
                read_entry(zf, info), name, channels, (height, width), limits.max_pixels
            )
            for row in rows[name]:
                X.put(row, image)
        return X.array(len(entries))
