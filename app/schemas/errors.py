"""The body of every error the API answers: `{"detail": ...}`, as FastAPI's own errors are.

`detail` is a sentence for a domain error (404, 409, 413, 429, ...), and a list of problems, each
naming its field (`loc`), for a refused request (422, 415, and an upload's 413)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    # FastAPI's own problems carry more keys (`input`, `ctx`, `url`): a client may read them.
    model_config = ConfigDict(extra="allow")

    loc: list[str | int] = Field(
        description='Where: ["body", "training", "epochs"], ["query", ...].'
    )
    msg: str
    type: str


class ErrorOut(BaseModel):
    detail: str | list[Problem]
