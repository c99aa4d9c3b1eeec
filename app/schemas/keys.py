"""API keys and the audit log as the API shows them. A key's secret appears once, in the answer
to its creation (`CreatedKeyOut.key`), and nowhere else."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tas.store.keys import SCOPES, TENANT_PATTERN

_SCOPES_DOC = "; ".join(f"`{name}`: {what}" for name, what in SCOPES.items())


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=TENANT_PATTERN, max_length=63, description="Whose objects it sees")
    scopes: list[str] = Field(min_length=1, max_length=len(SCOPES), description=_SCOPES_DOC)
    name: str | None = Field(None, max_length=255, description="What it is for")
    expires_days: float | None = Field(
        None, gt=0, le=36500, allow_inf_nan=False, description="Days until it stops working"
    )


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    tenant: str
    name: str | None
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyPage(BaseModel):
    items: list[KeyOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")


class CreatedKeyOut(KeyOut):
    key: str = Field(description="`tas_<id>_<secret>`: shown this once; only its hash is kept")


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    tenant: str
    key_id: str | None = Field(description="null: a call made while the server had no keys")
    action: str = Field(description="METHOD /route/{template}, or `cli keys create` and the like")
    route: str = Field(description="The path called")
    target: str | None = Field(description="The object written: its path ids or new location")
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")
