"""Turning a `/predict` body into an array the model takes, with errors that say what to send.

The body is parsed with orjson and the samples become one float32 array with `np.asarray` — not
float-by-float pydantic validation, which costs more than the forward pass for a 784-float sample.
The checks pydantic would make are made here by hand, with FastAPI's error shape (`loc`, `msg`),
against the documented models' fields and bounds (`PredictRequest`, `PredictForm`).
Tabular rows may also come keyed by feature name (`{"age": 59, ...}`): one type check of the first
sample tells them apart, so the array path pays nothing for them, and they become an array once the
model's card (its `feature_names`) is known. Images (base64 in `"images"`, or multipart files) are
decoded by the image loaders' own decoder (`tas.core.data.images.decode_image`: the model's channels,
its H×W, the uint8 pixels an upload keeps, read as pixel / 255), so a served image is prepared
exactly as a training image was; the model's own normalisation is applied later, by the predictor.

What a body may cost is bounded before the cost is paid: the numbers in a JSON body are counted on its
bytes before orjson makes a Python float of each (`max_values`), and the images' pixels, all images
together, are read from their headers before any is decoded (`max_pixels`: a small PNG can decode to
tens of millions of pixels). The body's bytes are bounded by the route, as they stream in."""

from __future__ import annotations

import base64
import binascii
import difflib
import io
import math
import operator
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson

from app.schemas.predict import TOP_K_MAX, PredictForm, PredictRequest
from tas.core.data.archive import UploadError, num
from tas.core.data.images import decode_image, open_image
from tas.core.predictor import InputShapeError, InputValueError, Predictor
from tas.errors import InvalidInput, PayloadTooLarge, body_error
from tas.store import registry as registry_store

#: The JSON body's fields and the form's text fields: the ones OpenAPI documents, in their order.
FIELDS = tuple(PredictRequest.model_fields)
FORM_FIELDS = tuple(name for name in PredictForm.model_fields if name != "file")
MAX_IMAGE_PIXELS = 40_000_000  # far above any model's input; stops decompression bombs early
#: Defaults of the bounds the route passes from the settings (TAS_PREDICT_MAX_VALUES,
#: TAS_PREDICT_MAX_PIXELS), for callers that parse without settings.
MAX_VALUES = 1_048_576
MAX_PIXELS = 4_194_304


@dataclass(slots=True)
class PredictCall:
    """A parsed request: the model reference and either raw samples, rows keyed by feature name
    (`records`, made an array by `records_array` once the model is known) or encoded images (with
    the names errors call them by: "images[3]", or a multipart file's name)."""

    model: str
    inputs: np.ndarray | None = None
    records: list[Any] | None = None
    images: list[bytes] | None = None
    image_names: list[str] | None = None
    top_k: int | None = None

    @property
    def size(self) -> int:
        if self.inputs is not None:
            return int(self.inputs.shape[0])
        if self.records is not None:
            return len(self.records)
        return len(self.images or ())


def _check_size(n: int, max_samples: int) -> None:
    if n > max_samples:
        raise PayloadTooLarge(
            f"{n} samples in one request; at most {max_samples} (TAS_PREDICT_MAX_SAMPLES) —"
            " split the batch"
        )


def _check_values(body: bytes, max_values: int) -> None:
    """Refuse a body that may hold more than `max_values` numbers, before it is parsed. Values in
    JSON are separated by commas, so commas + 1 bound their count from above (a comma inside a
    string only makes the bound looser); a body shorter than 2 × max_values bytes cannot hold that
    many (each value and its comma take two bytes at least), so the small request is not scanned."""
    if len(body) < 2 * max_values:
        return
    count = body.count(b",") + 1
    if count > max_values:
        raise PayloadTooLarge(
            f"the body holds up to {count:,} values; at most {max_values:,} in one request"
            " (TAS_PREDICT_MAX_VALUES) — split the batch"
        )


def _model_ref(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise body_error(
            "model", "model must be a job id, a name, name:version or name@alias (a string)"
        )
    if (problem := registry_store.version_problem(value)) is not None:
        raise body_error("model", problem)
    return value


def _top_k(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= TOP_K_MAX:
        raise body_error("top_k", f"top_k must be an integer from 1 to {TOP_K_MAX}, or null")
    return value


def _b64(value: Any, i: int) -> bytes:
    if not isinstance(value, str):
        raise body_error(("images", i), "each image must be a base64 string (PNG or JPEG)")
    if value.startswith("data:"):
        value = value.partition(",")[2]  # a data URL: data:image/png;base64,....
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise body_error(("images", i), f"not valid base64: {exc}") from exc


def parse_json(body: bytes, *, max_samples: int, max_values: int = MAX_VALUES) -> PredictCall:
    """`{"model": ..., "inputs": [...] | "images": [...], "top_k": k}` → a PredictCall. Blocking
    (orjson and numpy): the route runs it on a worker thread when the body is large."""
    _check_values(body, max_values)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise body_error(
            (), f"the body is not valid JSON ({exc}); NaN and Infinity are not JSON"
        ) from exc
    if not isinstance(data, dict):
        raise body_error((), 'the body must be a JSON object: {"model": ..., "inputs": [...]}')
    problems: list[tuple[tuple[str | int, ...], str]] = [
        (("body", key), f"unknown field; allowed: {', '.join(FIELDS)}")
        for key in data
        if key not in FIELDS
    ]
    if "model" not in data:
        problems.append((("body", "model"), "field required"))
    if ("inputs" in data) == ("images" in data):
        problems.append((("body", "inputs"), "give exactly one of inputs or images"))
    if problems:
        raise InvalidInput(problems)
    call = PredictCall(model=_model_ref(data["model"]), top_k=_top_k(data.get("top_k")))
    if "images" in data:
        images = data["images"]
        if not isinstance(images, list) or not images:
            raise body_error("images", "images must be a non-empty list of base64 PNG/JPEG strings")
        _check_size(len(images), max_samples)
        call.images = [_b64(v, i) for i, v in enumerate(images)]
        return call
    inputs = data["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise body_error(
            "inputs", "inputs must be a non-empty list of samples (a batch, even of one)"
        )
    _check_size(len(inputs), max_samples)
    if type(inputs[0]) is dict:  # rows by feature name: an array once the card is known
        call.records = inputs
        return call
    try:
        with np.errstate(over="ignore"):  # 1e39 → inf, rejected by the finiteness check
            call.inputs = np.asarray(inputs, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as exc:
        if any(type(sample) is dict for sample in inputs):
            raise body_error("inputs", MIXED) from exc
        raise body_error(
            "inputs",
            f"inputs must be a batch of numeric samples, all of the same shape (ragged or"
            f" non-numeric values: {exc})",
        ) from exc
    return call


MIXED = (
    "inputs mixes lists and objects: send every sample as a list of numbers, or every one as an"
    " object of feature name → number"
)


def records_array(
    records: list[Any], feature_names: list[str] | None, input_shape: tuple[int, ...]
) -> np.ndarray:
    """Rows keyed by feature name → an (N, F) float32 array in the card's column order, or a 422
    naming the row and the missing or unknown column (and listing the expected ones)."""
    if not feature_names or len(feature_names) != math.prod(input_shape):
        raise body_error(
            "inputs",
            f"this model has no feature names (its samples are shaped {list(input_shape)}): send"
            " each sample as a list of numbers",
        )
    expected = set(feature_names)
    pick = operator.itemgetter(*feature_names)
    rows: list[Any] = []
    for i, row in enumerate(records):
        if type(row) is not dict:
            raise body_error(("inputs", i), MIXED)
        if row.keys() != expected:
            problem = _column_problem(row, feature_names, expected)
            raise body_error(("inputs", i), f"{problem}; expected: {', '.join(feature_names)}")
        rows.append(pick(row))
    # Only JSON numbers: numpy would read "59" as 59.0, and a bool or null is no feature value.
    # One pass over the value types (C speed); the culprit is looked for only when there is one.
    if not _NUMBER_TYPES.issuperset(map(type, rows if len(feature_names) == 1 else chain(*rows))):
        for i, row in enumerate(records):
            for name in feature_names:
                if type(row[name]) not in _NUMBER_TYPES:
                    got = orjson.dumps(row[name]).decode()
                    raise body_error(
                        ("inputs", i, name), f"column {name!r} must be a number, got {got}"
                    )
    with np.errstate(over="ignore"):  # 1e39 → inf, rejected by the finiteness check
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(feature_names))


_NUMBER_TYPES = frozenset({int, float})


def _column_problem(row: dict[str, Any], names: list[str], expected: set[str]) -> str:
    problems = []
    missing = [n for n in names if n not in row]
    if missing:
        problems.append(f"missing column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}")
    for key in (k for k in row if k not in expected):
        close = difflib.get_close_matches(key, missing or names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"unknown column {key!r}{hint}")
    return "; ".join(problems)


def parse_form(
    fields: list[tuple[str, str]],
    files: list[bytes],
    *,
    max_samples: int,
    names: list[str] | None = None,
) -> PredictCall:
    """A multipart form: `model` (and `top_k`) fields, one or more image files (any field name),
    `names` the files' own names (what a corrupt file is called in the 422)."""
    values = dict(fields)
    unknown = [k for k in values if k not in FORM_FIELDS]
    if unknown:
        raise InvalidInput(
            [
                (("body", k), f"unknown form field; allowed: {', '.join(FORM_FIELDS)}, image files")
                for k in unknown
            ]
        )
    if "model" not in values:
        raise body_error("model", "field required")
    if not files:
        raise body_error("file", "attach at least one image file (PNG or JPEG)")
    _check_size(len(files), max_samples)
    return PredictCall(
        model=_model_ref(values["model"]),
        images=files,
        image_names=names,
        top_k=_top_k(values.get("top_k")),
    )


def _image_name(names: list[str] | None, i: int) -> str:
    return names[i] if names is not None and names[i] else f"images[{i}]"


def _check_pixels(images: list[bytes], names: list[str] | None, max_pixels: int) -> int:
    """The images' pixels, all together, from their headers alone (nothing is decoded), or a 413
    naming the limit as soon as the running total passes it; the per-image bound is the smaller of
    `MAX_IMAGE_PIXELS` and `max_pixels`."""
    per_image = min(MAX_IMAGE_PIXELS, max_pixels)
    total = 0
    for i, data in enumerate(images):
        name = _image_name(names, i)
        try:
            with open_image(io.BytesIO(data), name, per_image) as im:
                width, height = im.size
        except UploadError as exc:
            if exc.status == 413 and per_image == max_pixels:  # one image past the whole budget
                raise body_error(
                    ("images", i), f"{exc.message} in one request (TAS_PREDICT_MAX_PIXELS)", 413
                ) from exc
            raise body_error(("images", i), exc.message, exc.status) from exc
        total += width * height
        if total > max_pixels:
            raise body_error(
                ("images", i),
                f"the images decode to more than {num(max_pixels)} pixels (reached at {name!r},"
                f" {height}×{width}); the limit is {num(max_pixels)} pixels in one request"
                " (TAS_PREDICT_MAX_PIXELS) — send smaller images or fewer",
                413,
            )
    return total


def decode_images(
    images: list[bytes],
    input_shape: tuple[int, ...],
    names: list[str] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """(N, C, H, W) float32 in [0, 1]: each image converted to C channels and resized to H×W by the
    image loaders' decoder. A bad image is a 4xx naming it: `names[i]` (a multipart file's name) or
    "images[i]"; all headers are read and the pixels counted (`max_pixels`, all images together)
    before the first is decoded. Blocking (Pillow): callers run it on a worker thread."""
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise body_error(
            "images",
            f"this model takes samples of shape {list(input_shape)}, not images; send inputs",
        )
    channels, height, width = input_shape
    _check_pixels(images, names, max_pixels)
    out = np.empty((len(images), channels, height, width), dtype=np.float32)
    for i, data in enumerate(images):
        name = _image_name(names, i)
        try:
            out[i] = decode_image(data, name, channels, (height, width), MAX_IMAGE_PIXELS)
        except UploadError as exc:
            raise body_error(("images", i), exc.message, exc.status) from exc
    return out


def check(arr: np.ndarray, predictor: Predictor, field: str = "inputs") -> np.ndarray:
    """The batch as the model takes it, or a 422 stating the expected shape."""
    try:
        return predictor.check_array(arr)
    except (InputShapeError, InputValueError) as exc:
        raise body_error(field, str(exc)) from exc
