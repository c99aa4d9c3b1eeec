"""Who the caller is, as `GET /session` answers: what a page needs to know before it draws."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SessionOut(BaseModel):
    tenant: str
    scopes: list[str]
    key_id: str | None = Field(
        description="The key the caller authenticated with; null while no key exists."
    )
    open: bool = Field(description="True while no key exists: every caller is the default tenant.")
    csrf_token: str | None = Field(
        description="For a signed-in browser: send it as 'X-CSRF-Token' with every write."
    )
