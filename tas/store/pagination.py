"""Keyset pagination: one cursor format and one page type for every list the API serves."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

from tas.errors import (
    InvalidInput,
)
from tas.store.orm import (
    Job,
)


@dataclass
class Page:
    items: list[Job]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """A page cursor for lists ordered by (created_at, id) descending (jobs, datasets)."""
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, row_id = raw.split("|", 1)
        return datetime.fromisoformat(created), row_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            [(("query", "cursor"), "not a cursor this server issued; pass next_cursor back as is")]
        ) from exc
