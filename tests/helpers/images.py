"""Image payloads for /predict: encoded files and their base64 text."""

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
