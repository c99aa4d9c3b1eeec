"""`POST /predict`: the lean hot path.

The route reads the raw body (orjson + numpy, see app/services/inputs.py) instead of a pydantic
body model, and writes the response with orjson, so a single-sample request costs little besides
HTTP. The body's schema is still documented (`openapi_extra`, from `PredictRequest` and
`PredictForm`). Order of checks: the body, then the model (404 / 409), then the samples against
the model's input shape (422).

What a request may cost is bounded before it is paid: the body's bytes (TAS_PREDICT_MAX_BODY_MB) by
its Content-Length before a byte is read, and, for a body without one (chunked), as it streams in —
reading stops once it passes the limit, so at most the limit is ever held; a large JSON body is
parsed on a worker thread (`PARSE_INLINE_BYTES`); the numbers in it and the pixels of its images are
counted before they are made (app/services/inputs.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive

from app.api.deps import ServingDep, TenantDep, requires
from app.api.errors import is_json, send_json_message
from app.schemas.predict import PredictForm, PredictRequest, PredictResponse
from app.services import inputs
from tas.errors import InvalidUpload, PayloadTooLarge, body_error
from tas.settings import Settings

router = APIRouter(tags=["predict"], dependencies=[requires("predict")])

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "multipart/form-data": {"schema": PredictForm.model_json_schema()},
        },
    }
}


#: A JSON body larger than this is parsed on a worker thread; a smaller one (a few samples, the hot
#: path) on the event loop, where a thread hop would cost more than the parse. On the thread the
#: loop runs between the parse's steps (validation, the records' Python loops, image decoding, which
#: Pillow does without the GIL); orjson's and numpy's own C calls hold the GIL while they run, and
#: what bounds them is the count of numbers (TAS_PREDICT_MAX_VALUES: ~0.1 s at the default).
PARSE_INLINE_BYTES = 1 << 20
#: Rows by feature name beyond this many are made an array on a worker thread (the same reason).
RECORDS_INLINE = 1024


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """The most bytes a /predict body may have, and the setting that says so: /predict's own, or
    the upload limit when that is the smaller (no body is ever larger than an upload may be)."""

    max_bytes: int
    setting: str

    @classmethod
    def of(cls, settings: Settings) -> BodyLimit:
        if settings.max_upload_mb < settings.predict_max_body_mb:
            return cls(settings.max_upload_mb * 2**20, "TAS_MAX_UPLOAD_MB")
        return cls(settings.predict_max_body_mb * 2**20, "TAS_PREDICT_MAX_BODY_MB")

    def refuse(self, what: str) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"{what}; the limit is {self.max_bytes:,} bytes ({self.max_bytes / 2**20:g} MiB,"
            f" {self.setting})"
        )


def _bounded(receive: Receive, limit: BodyLimit) -> Receive:
    """`receive` that refuses the body (413) as soon as the bytes received pass the limit, so a
    body without a Content-Length (chunked) is never read, nor held, past it."""
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit.max_bytes:
                raise limit.refuse(f"the body passed {limit.max_bytes:,} bytes while streaming in")
        return message

    return bounded


async def _read_call(request: Request, settings: Settings) -> inputs.PredictCall:
    limit = BodyLimit.of(settings)
    max_samples = settings.predict_max_samples
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit.max_bytes:
        raise limit.refuse(f"the body is {int(length):,} bytes")
    request = Request(request.scope, _bounded(request.receive, limit))
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        fields: list[tuple[str, str]] = []
        files: list[bytes] = []
        names: list[str] = []
        async with request.form(max_files=max_samples, max_fields=16) as form:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files.append(await value.read())
                    names.append(value.filename or f"{key}[{len(files) - 1}]")
                else:
                    fields.append((key, value))
        return inputs.parse_form(fields, files, max_samples=max_samples, names=names)
    if ctype and not is_json(ctype):
        raise InvalidUpload(
            [
                (
                    ("header", "content-type"),
                    send_json_message(ctype, also="multipart/form-data with image files"),
                )
            ],
            status_code=415,
        )
    body = await request.body()
    if len(body) > PARSE_INLINE_BYTES:
        return await run_in_threadpool(
            inputs.parse_json,
            body,
            max_samples=max_samples,
            max_values=settings.predict_max_values,
        )
    return inputs.parse_json(body, max_samples=max_samples, max_values=settings.predict_max_values)


@router.post(
    "/predict",
    response_model=PredictResponse,
    openapi_extra=_BODY_DOC,
    responses={
        404: {"description": "Unknown model"},
        409: {"description": "The job has not succeeded"},
        413: {"description": "More bytes, samples, numbers or pixels than allowed"},
        415: {"description": "Neither JSON nor multipart/form-data"},
        422: {"description": "A bad body, shape, value or image; `detail` says what is expected"},
    },
)
async def predict(request: Request, serving: ServingDep, tenant: TenantDep) -> Response:
    """Predictions from a trained model, with the model's own preprocessing applied; concurrent
    requests for one model share a forward pass."""
    start = time.perf_counter()
    settings = serving.settings
    call = await _read_call(request, settings)
    model = await serving.resolve(call.model, tenant)
    served = await serving.load(model)
    predictor = served.predictor
    if call.images is not None:
        arr = await run_in_threadpool(
            inputs.decode_images,
            call.images,
            predictor.input_shape,
            call.image_names,
            settings.predict_max_pixels,
        )
        field = "images"
    elif call.records is not None:
        names, shape = predictor.card.feature_names, predictor.input_shape
        if len(call.records) > RECORDS_INLINE:  # a Python loop per row: off the event loop
            arr = await run_in_threadpool(inputs.records_array, call.records, names, shape)
        else:
            arr = inputs.records_array(call.records, names, shape)
        field = "inputs"
    else:
        assert call.inputs is not None
        arr, field = call.inputs, "inputs"
    batch = inputs.check(arr, predictor, field)
    if call.top_k is not None and predictor.card.output == "identity":
        raise body_error("top_k", "top_k applies to classification models only")
    observer = served.batcher.observer or serving.observer(model, served)
    rows = await served.batcher.predict(batch, call.top_k)
    if observer is not None:
        observer.latency.observe(time.perf_counter() - start)
    body = {
        "model": {"name": model.name, "version": model.version, "job_id": model.job_id},
        "predictions": rows,
    }
    return Response(orjson.dumps(body), media_type="application/json")
