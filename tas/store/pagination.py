"""Keyset pagination: one cursor format, one page type and one query for every list the API
serves (jobs, datasets).

Lists are ordered newest first by (created_at, id), and a cursor is the pair of the last item
served: the next page starts strictly after it, so rows inserted meanwhile never make a page skip
or repeat one (an OFFSET would), and each page is one index range scan however deep it is."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from tas.errors import (
    InvalidInput,
)


class Keyed(Protocol):
    """A row a list pages over: the two values its cursor is made of."""

    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> str | int: ...


T = TypeVar("T")
K = TypeVar("K", bound=Keyed)


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def paginate(
    session: Session,
    query: Select[K],
    *,
    created_col: InstrumentedAttribute[datetime],
    id_col: InstrumentedAttribute[str] | InstrumentedAttribute[int],
    limit: int,
    cursor: str | None,
) -> Page[K]:
    """One page of `query` (already filtered, not yet ordered), newest first. `created_col` and
    `id_col` are the columns the rows' `created_at` and `id` come from. One row past `limit` is
    read to tell whether a next page exists, so the last page carries no cursor."""
    if cursor is not None:
        created, raw_id = decode_cursor(cursor)
        row_id: str | int = raw_id
        if id_col.type.python_type is int:
            if not raw_id.isdigit():
                raise _bad_cursor()
            row_id = int(raw_id)
        query = query.where(
            or_(created_col < created, and_(created_col == created, id_col < row_id))
        )
    rows = list(session.scalars(query.order_by(created_col.desc(), id_col.desc()).limit(limit + 1)))
    items = rows[:limit]
    more = len(rows) > limit
    return Page(
        items, encode_cursor(items[-1].created_at, items[-1].id) if more and items else None
    )


def encode_cursor(created_at: datetime, row_id: str | int) -> str:
    """A page cursor for lists ordered by (created_at, id) descending (jobs, datasets)."""
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, row_id = raw.split("|", 1)
        return datetime.fromisoformat(created), row_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_cursor() from exc


def _bad_cursor() -> InvalidInput:
    return InvalidInput(
        [(("query", "cursor"), "not a cursor this server issued; pass next_cursor back as is")]
    )
