from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A job id, a model name, name:version or name@alias.")
    inputs: list[Any] = Field(
        min_length=1,
        description="A batch of samples, each shaped like the dataset's sample "
        "(a feature list, or a nested H×W / C×H×W array).",
    )


class ModelRef(BaseModel):
    name: str
    version: int
    job_id: str


class PredictResponse(BaseModel):
    model: ModelRef
    predictions: list[dict[str, Any]]


class ModelVersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    version: int
    job_id: str
    metrics: dict[str, Any] | None
    card: dict[str, Any]


class ModelOut(BaseModel):
    name: str
    latest_version: int
    versions: list[ModelVersionOut]
