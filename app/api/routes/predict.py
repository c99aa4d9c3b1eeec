"""`POST /predict`: the lean hot path.

The route reads the raw body (orjson + numpy, see app/services/inputs.py) instead of a pydantic
body model, and writes the response with orjson, so a single-sample request costs little besides
HTTP. The body's schema is still documented (`openapi_extra`, from `PredictRequest` and
`PredictForm`). Order of checks: the body, then the model (404 / 409), then the samples against
the model's input shape (422)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.api.deps import ServingDep, TenantDep
from app.api.errors import is_json, send_json_message
from app.schemas.predict import PredictForm, PredictRequest, PredictResponse
from app.services import inputs
from tas.errors import InvalidUpload, PayloadTooLarge, body_error

router = APIRouter(tags=["predict"])

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "multipart/form-data": {"schema": PredictForm.model_json_schema()},
        },
    }
}


async def _read_call(request: Request, max_bytes: int, max_samples: int) -> inputs.PredictCall:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(
            f"the body is {int(length)} bytes; at most {max_bytes} (TAS_MAX_UPLOAD_MB)"
        )
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
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"the body is {len(body)} bytes; at most {max_bytes}")
    return inputs.parse_json(body, max_samples=max_samples)


@router.post(
    "/predict",
    response_model=PredictResponse,
    openapi_extra=_BODY_DOC,
    responses={
        404: {"description": "Unknown model"},
        409: {"description": "The job has not succeeded"},
        413: {"description": "More samples (or bytes) than allowed"},
        415: {"description": "Neither JSON nor multipart/form-data"},
        422: {"description": "A bad body, shape, value or image; `detail` says what is expected"},
    },
)
async def predict(request: Request, serving: ServingDep, tenant: TenantDep) -> Response:
    """Predictions from a trained model, with the model's own preprocessing applied; concurrent
    requests for one model share a forward pass."""
    start = time.perf_counter()
    settings = serving.settings
    call = await _read_call(request, settings.max_upload_mb * 2**20, settings.predict_max_samples)
    model = await serving.resolve(call.model, tenant)
    served = await serving.load(model)
    predictor = served.predictor
    if call.images is not None:
        arr = await run_in_threadpool(
            inputs.decode_images, call.images, predictor.input_shape, call.image_names
        )
        field = "images"
    elif call.records is not None:
        arr = inputs.records_array(
            call.records, predictor.card.feature_names, predictor.input_shape
        )
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
