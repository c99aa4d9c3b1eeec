"""`GET /jobs/{id}/metrics`'s rows, and the downsampled points `?max_points=` answers instead."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.schemas.jobs import MetricRowOut


class MetricBucketOut(BaseModel):
    """The rows one downsampled point stands for: how many, where they start (the point's own
    `epoch`/`step` is where they end) and each key's spread over them."""

    rows: int = Field(description="Rows of the series this point stands for (1: a row as stored).")
    first_epoch: int = Field(description="The epoch of the bucket's first row.")
    first_step: int | None = Field(
        description="The step of the bucket's first row (null in the epoch series)."
    )
    min: dict[str, float] = Field(
        description="Per key, the smallest value in the bucket (a key no row of it has: absent)."
    )
    max: dict[str, float] = Field(description="Per key, the largest value in the bucket.")


class MetricSeriesOut(MetricRowOut):
    """A row of `GET /jobs/{id}/metrics`: `epoch`, `step` (null for an epoch's row) and the
    metric keys as columns. With `max_points` each item is a downsampled point instead: the
    epoch, step and values of the last row of its bucket (the series' first and last rows are
    always points of their own), and `bucket` with the bucket's row count, start, min and max."""

    bucket: MetricBucketOut | None = Field(
        default=None, description="Only with max_points: the rows this point stands for."
    )
