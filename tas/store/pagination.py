"""Keyset pagination: one cursor format, one page type and one query for every list the API
serves (jobs, datasets, searches, keys, the audit log).

Lists are ordered newest first by (created_at, id), and a cursor is the pair of the last item
served: the next page starts strictly after it, so rows inserted meanwhile never make a page skip
or repeat one (an OFFSET would), and each page is one index range scan however deep it is.

A list that offers other orders (`GET /jobs?sort=`) pages them with `paginate_ordered`: the same
keyset idea over any tuple of sort keys ending in the id, its cursor carrying the order's name and
the last row's key values as the database computed them."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import ColumnElement, Select, and_, false, or_
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
        when = datetime.fromisoformat(created)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_cursor() from exc
    if "\x00" in row_id:
        # No id holds one, and PostgreSQL refuses a NUL in a text parameter (a 500 otherwise).
        raise _bad_cursor()
    return when, row_id


def _bad_cursor() -> InvalidInput:
    return InvalidInput(
        [(("query", "cursor"), "not a cursor this server issued; pass next_cursor back as is")]
    )


#: The types a sort key's value may have in a cursor: JSON carries str, int and float as they
#: are, a datetime as ISO 8601.
KeyKind = type[str] | type[int] | type[float] | type[datetime]


@dataclass(frozen=True)
class SortKey:
    """One column of an order: an expression, its direction and the type its values have."""

    expr: ColumnElement[Any] | InstrumentedAttribute[Any]
    descending: bool
    kind: KeyKind
    #: Whether the expression may be NULL. Such a key must follow a key that sorts its NULL rows
    #: apart (e.g. `expr IS NULL` ascending, for NULLs last): NULLs only tie with each other, so
    #: no row is "after" a NULL on this key, and the following keys break the tie.
    nullable: bool = False


@dataclass(frozen=True)
class Order:
    """A named total order: the last key must be unique (the id), so no two rows tie."""

    name: str
    keys: tuple[SortKey, ...]


def paginate_ordered(
    session: Session, query: Select[K], order: Order, *, limit: int, cursor: str | None
) -> Page[K]:
    """One page of `query` (filtered, not yet ordered) in `order`. The key values are selected
    with the rows and the cursor carries them as the database computed them (a duration is a
    float the database derived), so the next page's bound compares equal to the row it came
    from and paging never skips or repeats a row, ties included."""
    if cursor is not None:
        query = query.where(_after(order.keys, decode_ordered_cursor(cursor, order)))
    directed = [k.expr.desc() if k.descending else k.expr.asc() for k in order.keys]
    q = query.add_columns(*(k.expr for k in order.keys)).order_by(*directed).limit(limit + 1)
    rows = session.execute(q).all()
    items: list[K] = [row[0] for row in rows[:limit]]
    if len(rows) <= limit or not items:
        return Page(items, None)
    return Page(items, encode_ordered_cursor(order, tuple(rows[limit - 1])[1:]))


def _after(keys: Sequence[SortKey], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after `values` in the order of `keys`: lexicographic, each key in its own
    direction, a NULL equal only to NULL (and nothing strictly after it on that key)."""
    clauses: list[ColumnElement[bool]] = []
    for i, (key, value) in enumerate(zip(keys, values, strict=True)):
        if value is None:
            continue
        ties = [
            k.expr.is_(None) if v is None else k.expr == v
            for k, v in zip(keys[:i], values[:i], strict=True)
        ]
        step = key.expr < value if key.descending else key.expr > value
        clauses.append(and_(*ties, step))
    return or_(*clauses) if clauses else false()


def encode_ordered_cursor(order: Order, values: Sequence[Any]) -> str:
    """A cursor for `order`: its name and the last row's key values, as JSON in base64url."""
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    raw = json.dumps([order.name, *plain], separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def ordered_cursor_name(cursor: str) -> str | None:
    """The order a cursor of `paginate_ordered` pages, or None when it is not one."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return None
    return raw[0] if isinstance(raw, list) and raw and isinstance(raw[0], str) else None


def decode_ordered_cursor(cursor: str, order: Order) -> list[Any]:
    """The key values a cursor carries, checked against `order`: a cursor another order issued
    (or the default order's cursor) is a 422 naming the cursor and the sort it belongs to."""
    name = ordered_cursor_name(cursor)
    if name is None:
        raise _bad_cursor()
    if name != order.name:
        raise wrong_order_cursor(name, order.name)
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))[1:]
    if len(raw) != len(order.keys):
        raise _bad_cursor()
    try:
        return [_typed(key, value) for key, value in zip(order.keys, raw, strict=True)]
    except (TypeError, ValueError) as exc:
        raise _bad_cursor() from exc


def _typed(key: SortKey, value: Any) -> Any:
    if value is None:
        if not key.nullable:
            raise ValueError("null key")
        return None
    if key.kind is datetime:
        if not isinstance(value, str):
            raise TypeError("not a time")
        return datetime.fromisoformat(value)
    if key.kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("not a number")
        return float(value)
    if key.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("not an integer")
        return value
    if not isinstance(value, str):
        raise TypeError("not a string")
    if "\x00" in value:
        raise ValueError("PostgreSQL refuses a NUL in a text parameter")
    return value


def wrong_order_cursor(issued_for: str, asked: str) -> InvalidInput:
    return InvalidInput(
        [
            (
                ("query", "cursor"),
                f"this cursor pages sort={issued_for}, not sort={asked}; pass the same sort"
                " with it, or start again without a cursor",
            )
        ]
    )
