"""Shapes of /predict (the registry's own are in app/schemas/models.py).

`PredictRequest` and `PredictForm` document the body in the OpenAPI schema. The route parses the
raw body itself, with orjson and numpy (app/services/inputs.py: several times faster than pydantic
for arrays of floats, with the same checks), but takes its field names and the bounds of `top_k`
from these models, so the body documented is the body parsed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: The most classes `top_k` may ask for (its lower bound is 1).
TOP_K_MAX = 1000


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A job id, a model name, name:version or name@alias.")
    inputs: list[Any] | None = Field(
        None,
        min_length=1,
        description="A batch of samples, each shaped like the dataset's sample "
        "(a feature list, or a nested H×W / C×H×W array), raw: the model's own normalisation "
        'is applied. Tabular models also take rows by feature name ({"age": 59, ...}, the '
        "card's feature_names; every column, any order), all rows or all lists. Give this or "
        "images.",
    )
    images: list[str] | None = Field(
        None,
        min_length=1,
        description="Base64 PNG/JPEG images (a data: URL is fine), converted to the model's "
        "channels, resized to its H×W and scaled to [0, 1].",
    )
    top_k: int | None = Field(
        None, ge=1, le=TOP_K_MAX, description="Also return the k likeliest classes per sample."
    )


class PredictForm(BaseModel):
    """multipart/form-data: the same, with the images as files."""

    # `file` stands for the images, which may come in any field; the other fields are the text
    # fields the parser accepts.

    model: str = Field(description="A job id, a model name, name:version or name@alias.")
    top_k: int | None = Field(None, ge=1, le=TOP_K_MAX)
    file: list[bytes] = Field(
        description="One or more PNG/JPEG files (any field name is accepted).",
        json_schema_extra={"items": {"type": "string", "format": "binary"}},
    )


class ModelRef(BaseModel):
    name: str
    version: int
    job_id: str


class TopK(BaseModel):
    label: int
    class_name: str | None
    probability: float


class Prediction(BaseModel):
    label: int | None = None
    class_name: str | None = None
    probabilities: list[float] | None = None
    top_k: list[TopK] | None = None
    value: float | list[float] | None = Field(None, description="Regression models only.")


class PredictResponse(BaseModel):
    model: ModelRef
    predictions: list[Prediction]
