"""Image payloads: encoded files and their base64 text for /predict, and the exact-pixel images the
upload readers are fed."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    """An image file from a [0, 1] H×W (or H×W×3) array."""
    img = Image.fromarray(np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_bytes(a: np.ndarray, fmt: str = "PNG") -> bytes:
    """uint8 H×W (grey) or H×W×3 (colour) → PNG/JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt)
    return buf.getvalue()


def grey(h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
