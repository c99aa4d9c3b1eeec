"""A rollup of each job's step rows, so a chart of a long run costs about `max_points` rows.

A job's step rows (step >= 0), in training order, are positions 0, 1, 2, ... of its step series.
A block of level L holds, for positions [k * 2**L, (k + 1) * 2**L), each numeric key's min, max
and last value (`MetricBlock`). Blocks are written as the rows arrive, in the transaction that
writes them (`after_write`, from `leases.upsert_metrics`): every whole block of level
BASE_LEVEL (16 rows) and up, a parent made of its two children, never one of part of a block.
Their rows are n/16 + n/32 + ... = n/8 per n step rows.

Invariant (what a reader relies on): the blocks of a job are exactly the whole blocks, at every
level from BASE_LEVEL up, inside the prefix of the series covered by its level-BASE_LEVEL
blocks; the rows after that prefix (fewer than 16 once the writer has caught up) are its tail.
A resumed run replays from its checkpoint and rewrites rows already written: every block reaching
past the first rewritten position is dropped, and the blocks are rebuilt from there.

A reader (`cover`) picks the level L whose blocks are at most a bucket long, 2**L <= (n - 1) /
(max_points - 1), and reads the rows of the series' first level-L block one by one (row 0 is a
point of its own), the level-L blocks after it, a few smaller blocks to the end of the covered
prefix, and the tail's rows: at most about 2 * max_points rows whatever n. 100,000 step rows to
1,000 points read 1,562 blocks and 64 + 15 rows instead of 100,000 rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Text, cast, delete, func, select, tuple_, union_all
from sqlalchemy.orm import Session

from tas.store.orm import MetricBlock, MetricRow

#: The smallest block: 2**4 = 16 rows.
BASE_LEVEL = 4
#: Rows read at once while catching up (a migration's backfill, a job written without blocks):
#: bounded memory whatever the series' length.
CHUNK_ROWS = 1 << 16

#: What a key may look like (the names the training loop and the evaluation write). It bounds
#: what goes into a JSON path or a block, so no client string can make a path malformed.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

#: A row's place in training order.
Key = tuple[int, int]
#: A row as read for a chart: epoch, step, its values.
Row = tuple[int, int, dict[str, object]]
Numbers = dict[str, float]


def numbers(values: dict[str, object]) -> Numbers:
    """The values a chart can draw: numbers (not NaN, which stands for "none" in a series)
    under a well-formed key. A bool is an int to Python but not a number to a chart (nor to
    JSON); a string is not either."""
    found = {}
    for k, v in values.items():
        is_number = isinstance(v, int | float) and not isinstance(v, bool) and v == v
        if is_number and KEY_PATTERN.fullmatch(k):
            found[k] = float(v)  # type: ignore[arg-type]
    return found


@dataclass
class Unit:
    """Consecutive rows of a series reduced to one: a row, or a block."""

    start: int
    rows: int
    first: Key
    last_key: Key
    low: Numbers
    high: Numbers
    last: Numbers

    @classmethod
    def of_row(cls, position: int, row: Row) -> Unit:
        epoch, step, values = row
        found = numbers(values)
        return cls(position, 1, (epoch, step), (epoch, step), found, found, found)

    @classmethod
    def of_block(cls, b: MetricBlock) -> Unit:
        stats = b.stats
        return cls(
            b.start,
            b.stop - b.start,
            (b.first_epoch, b.first_step),
            (b.last_epoch, b.last_step),
            stats.get("min", {}),
            stats.get("max", {}),
            stats.get("last", {}),
        )

    def then(self, later: Unit) -> Unit:
        """This unit and the one right after it, as one."""
        low = dict(self.low)
        for k, v in later.low.items():
            low[k] = min(low[k], v) if k in low else v
        high = dict(self.high)
        for k, v in later.high.items():
            high[k] = max(high[k], v) if k in high else v
        return Unit(
            self.start, self.rows + later.rows, self.first, later.last_key, low, high, later.last
        )

    def block(self, job_id: str, level: int) -> MetricBlock:
        return MetricBlock(
            job_id=job_id,
            level=level,
            start=self.start,
            stop=self.start + self.rows,
            first_epoch=self.first[0],
            first_step=self.first[1],
            last_epoch=self.last_key[0],
            last_step=self.last_key[1],
            stats={"min": self.low, "max": self.high, "last": self.last},
        )


def step_rows(job_id: str) -> ColumnElement[bool]:
    return (MetricRow.job_id == job_id) & (MetricRow.step >= 0)


def read_rows(
    session: Session,
    where: ColumnElement[bool],
    *,
    after: Key | None = None,
    limit: int | None = None,
) -> list[Row]:
    """Rows in training order, their values as the JSON text the database holds, straight from
    the driver's cursor and decoded by one `json.loads` of them all: SQLAlchemy's rows, or a
    decode per row, would cost as much again as the fetch (100,000 rows: 0.3 s in all)."""
    q = select(MetricRow.epoch, MetricRow.step, cast(MetricRow.values, Text)).where(where)
    if after is not None:
        q = q.where(tuple_(MetricRow.epoch, MetricRow.step) > tuple_(*after))
    q = q.order_by(MetricRow.epoch, MetricRow.step).limit(limit)
    result = session.connection().execute(q)
    fetched: Sequence[tuple[int, int, str]] = result.cursor.fetchall()
    result.close()
    if not fetched:
        return []
    decoded: list[object] = json.loads("[" + ",".join([r[2] for r in fetched]) + "]")
    return [
        (int(r[0]), int(r[1]), v if isinstance(v, dict) else {})
        for r, v in zip(fetched, decoded, strict=True)
    ]


def _covered(session: Session, job_id: str) -> tuple[int, Key | None]:
    """How many leading rows the blocks cover, and the last covered row's key."""
    last = session.execute(
        select(MetricBlock.stop, MetricBlock.last_epoch, MetricBlock.last_step)
        .where(MetricBlock.job_id == job_id, MetricBlock.level == BASE_LEVEL)
        .order_by(MetricBlock.start.desc())
        .limit(1)
    ).first()
    if last is None:
        return 0, None
    return int(last[0]), (int(last[1]), int(last[2]))


def after_write(session: Session, job_id: str, first_written: Key) -> None:
    """Bring the job's blocks up to date after step rows from `first_written` on were written
    (added, or replaced by a resumed run) in this transaction."""
    session.flush()
    _, last_covered = _covered(session, job_id)
    if last_covered is not None and first_written <= last_covered:
        position = session.scalar(
            select(func.count())
            .select_from(MetricRow)
            .where(
                step_rows(job_id),
                tuple_(MetricRow.epoch, MetricRow.step) < tuple_(*first_written),
            )
        )
        session.execute(
            delete(MetricBlock).where(
                MetricBlock.job_id == job_id, MetricBlock.stop > int(position or 0)
            )
        )
    extend(session, job_id)


def extend(session: Session, job_id: str) -> None:
    """Add the whole blocks the rows after the covered prefix make, at every level. Used by the
    writer, by the migration that backfills existing jobs, and by anything that inserts rows
    without `upsert_metrics` (the benchmarks' seeds)."""
    covered, after = _covered(session, job_id)
    size = 1 << BASE_LEVEL
    while True:
        rows = read_rows(session, step_rows(job_id), after=after, limit=CHUNK_ROWS)
        whole = len(rows) // size * size
        if whole == 0:
            return
        units = [Unit.of_row(covered + i, row) for i, row in enumerate(rows[:whole])]
        base = [_fold(units[i : i + size]) for i in range(0, whole, size)]
        _add_levels(session, job_id, covered, covered + whole, base)
        covered += whole
        after = base[-1].last_key
        if len(rows) < CHUNK_ROWS:
            return


def _fold(units: Sequence[Unit]) -> Unit:
    out = units[0]
    for u in units[1:]:
        out = out.then(u)
    return out


def _add_levels(session: Session, job_id: str, old: int, new: int, base: list[Unit]) -> None:
    """Write the new level-BASE blocks (`base`, covering positions old..new) and every parent
    they complete. A new parent's right child is new; only the first new parent of a level can
    have an older left child, read from the table."""
    level, made = BASE_LEVEL, {u.start: u for u in base}
    session.add_all(u.block(job_id, level) for u in base)
    while True:
        level += 1
        size = 1 << level
        first = old // size * size
        starts = range(first, new - size + 1, size)
        if not starts:
            return
        half = size >> 1
        left_of_first = made.get(first)
        if left_of_first is None:
            stored = session.get(MetricBlock, (job_id, level - 1, first))
            if stored is None:  # the invariant does not hold: leave the higher levels unbuilt
                return
            left_of_first = Unit.of_block(stored)
        parents = {}
        for s in starts:
            left = left_of_first if s == first else made[s]
            parents[s] = left.then(made[s + half])
        session.add_all(u.block(job_id, level) for u in parents.values())
        made = parents


def cover(session: Session, job_id: str, max_points: int) -> list[Unit] | None:
    """The job's step series as consecutive units, none longer than a bucket of `max_points`
    (>= 2) buckets: the first block's rows one by one, blocks, the tail's rows. None when the
    series should be read row by row: no blocks yet, at most `max_points` rows, buckets shorter
    than a level-BASE block, or blocks that do not line up (a resumed run rebuilding them between
    this read's statements)."""
    covered, last_covered = _covered(session, job_id)
    if covered == 0:
        return None
    tail = read_rows(session, step_rows(job_id), after=last_covered)
    n = covered + len(tail)
    if n <= max_points:
        return None
    level = min(((n - 1) // (max_points - 1)).bit_length(), covered.bit_length()) - 1
    if level < BASE_LEVEL:
        return None
    size = 1 << level
    # From the last whole level-`level` block to the covered prefix's end: one block of each
    # smaller level at most (the binary digits of the remainder), aligned by construction.
    smaller: list[tuple[int, int]] = []
    position = covered // size * size
    for lower in range(level - 1, BASE_LEVEL - 1, -1):
        if position + (1 << lower) <= covered:
            smaller.append((lower, position))
            position += 1 << lower
    columns = (
        MetricBlock.start,
        MetricBlock.stop,
        MetricBlock.first_epoch,
        MetricBlock.first_step,
        MetricBlock.last_epoch,
        MetricBlock.last_step,
        cast(MetricBlock.stats, Text),
    )
    # One index range and a seek per smaller block, as a UNION ALL: an OR of them would have
    # the database scan every block of the job (12,500 for 100,000 rows: twice the time).
    parts = [
        select(*columns).where(
            MetricBlock.job_id == job_id,
            MetricBlock.level == level,
            MetricBlock.start >= size,
            MetricBlock.stop <= covered,
        )
    ] + [
        select(*columns).where(
            MetricBlock.job_id == job_id, MetricBlock.level == lower, MetricBlock.start == start
        )
        for lower, start in smaller
    ]
    q = union_all(*parts).order_by("start") if smaller else parts[0].order_by(MetricBlock.start)
    result = session.connection().execute(q)
    fetched: Sequence[tuple[int, int, int, int, int, int, str]] = result.cursor.fetchall()
    result.close()
    stats: list[dict[str, Numbers]] = json.loads("[" + ",".join([b[6] for b in fetched]) + "]")
    head = read_rows(session, step_rows(job_id), limit=size)
    units = [Unit.of_row(i, row) for i, row in enumerate(head)]
    units += [
        Unit(b[0], b[1] - b[0], (b[2], b[3]), (b[4], b[5]), s["min"], s["max"], s["last"])
        for b, s in zip(fetched, stats, strict=True)
    ]
    units += [Unit.of_row(covered + i, row) for i, row in enumerate(tail)]
    expected = 0
    for u in units:
        if u.start != expected:
            return None
        expected += u.rows
    return units if expected == n else None
