"""Shapes of /models: the registry's versions and aliases, and the names they are reached by."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tas.store.registry import MAX_VERSION

#: A model's name or an alias, as job names are spelled: checked in the path, so `../`, encoded
#: slashes and backslashes never reach a query or a file path.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ModelVersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    version: int
    job_id: str = Field(description="The job that trained it.")
    metrics: dict[str, Any] | None
    created_at: datetime
    aliases: list[str] = Field(default_factory=list)
    card: dict[str, Any]


class ModelOut(BaseModel):
    name: str
    latest_version: int
    aliases: dict[str, int] = Field(default_factory=dict, description="alias → version")
    versions: list[ModelVersionOut]


class AliasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION, description="The version the alias should point at.")


class AliasOut(BaseModel):
    name: str
    alias: str
    version: int
    updated_at: datetime


class AliasEventOut(BaseModel):
    """One change to one of a model's aliases, from the audit log."""

    at: datetime
    alias: str
    action: Literal["set", "deleted", "version_deleted"] = Field(
        description="set: created or moved to `version`; deleted: removed (it pointed at"
        " `version`); version_deleted: removed with the version it pointed at."
    )
    version: int | None = Field(
        description="The version set or removed; null for a change recorded before versions were"
        " kept in the audit log."
    )
