"""Shapes of /datasets and /weights, and the multipart forms they take.

The routes parse the form themselves, streaming (app/services/uploads.py: a pydantic form model
would need the whole file spooled first), but from these models: `DatasetForm` and `WeightsForm`
are what OpenAPI documents *and* the list of fields the parser accepts. The values are checked by
the core (which names the field at fault); tests/unit/app/api/test_documented_bodies.py fails when
the choices documented here and the core's differ."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tas.core.data.formats.registry import FORMATS

if TYPE_CHECKING:
    FormatName = str
else:
    #: The `format` choices, in the order of the core's format registry: a new format is one
    #: entry there and appears here (and in OpenAPI) by itself.
    FormatName = Literal[tuple(FORMATS)]

#: The longest name a dataset or weights file may be given (the form's `name`).
NAME_MAX_LENGTH = 255


class DatasetSchemaOut(BaseModel):
    """What the dataset is, as a job sees it: inferred at upload (or known, for a built-in)."""

    model_config = ConfigDict(extra="allow")

    format: str = Field(description="csv | npz | image_folder | image_annotations | builtin")
    task: str = Field(description="classification | regression")
    kind: str = Field(description="tabular | image")
    samples: int | None = None
    input_shape: list[int] = Field(description="One sample's shape: [features] or [C, H, W].")
    num_classes: int | None = None
    class_names: list[str] | None = None
    class_counts: dict[str, int] | list[int] | None = Field(
        None,
        description="Samples per class: an upload's by class name; a built-in's in class order"
        " (of its training split when it has an official test split).",
    )
    target_dim: int = 1
    feature_names: list[str] | None = Field(None, description="CSV: the feature columns, in order.")
    options: dict[str, Any] | None = Field(
        None, description="How the upload was read (format, target, task, size)."
    )


class DatasetOut(BaseModel):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    id: str = Field(description="An upload's id, or a built-in's name; use as dataset.id / .name.")
    name: str
    builtin: bool
    format: str
    sha256: str | None = Field(None, description="The uploaded file's content hash.")
    size_bytes: int | None = None
    created_at: datetime | None = None
    dataset_schema: DatasetSchemaOut = Field(
        serialization_alias="schema", validation_alias="schema"
    )


class DatasetPage(BaseModel):
    items: list[DatasetOut] = Field(
        description="The first page starts with the built-ins; then the uploads, newest first."
    )
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page of uploads; null on the last."
    )


class DatasetForm(BaseModel):
    """multipart/form-data body of POST /datasets."""

    # The docstring is the schema's OpenAPI description. `file` is the upload; every other field
    # is a small text field, accepted by the parser because it is listed here.

    model_config = ConfigDict(extra="forbid")

    file: bytes = Field(
        json_schema_extra={"format": "binary"},
        description="CSV, NPZ (arrays X and y), or a ZIP of images (class folders, or an"
        " annotations CSV of file name and label beside the images).",
    )
    name: str | None = Field(
        None, max_length=NAME_MAX_LENGTH, description="Default: the file's name stem."
    )
    format: FormatName | None = Field(None, description="Default: from the file name and contents.")
    target: str | None = Field(
        None,
        description="The label column. CSV default: a column named 'target' or 'label'; annotations"
        " CSV default: the second column.",
    )
    task: Literal["classification", "regression"] | None = Field(
        None, description="Default: inferred from the target."
    )
    size: str | None = Field(
        None,
        description="Images: resize to this size, 'S' or 'HxW' (e.g. '28' or '32x32').",
        examples=["28", "32x32"],
    )


class WeightsForm(BaseModel):
    """multipart/form-data body of POST /weights."""

    model_config = ConfigDict(extra="forbid")

    file: bytes = Field(
        json_schema_extra={"format": "binary"},
        description="A safetensors file (never a pickle: .pt/.pth files are refused).",
    )
    name: str | None = Field(
        None, max_length=NAME_MAX_LENGTH, description="Default: the file's name."
    )


class WeightsOut(BaseModel):
    id: str = Field(description="Use as model.init_from: 'weights:<id>'.")
    sha256: str
    name: str
    size_bytes: int
    tensors: dict[str, list[int]] = Field(description="Each tensor's name and shape.")
    created_at: datetime
