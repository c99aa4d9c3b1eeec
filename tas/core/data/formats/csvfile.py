"""CSV: a table of numeric features and one label column, the label column being `target`, else a
column named "target" or "label"; every other column is a numeric feature (how the task is decided:
`tas.core.data.formats.common`). The delimiter is whichever of `DELIMITERS` splits the header into
the most fields.

The text helpers here (`text_lines`, `sniff_delimiter`, `find_column`) also read the annotations
CSV inside an image archive."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import torch

from tas.core.data.archive import UploadError, UploadLimits
from tas.core.data.dataset import Arrays
from tas.core.data.formats.base import Contents, Format, Probe, ReadOptions
from tas.core.data.formats.common import (
    Codes,
    check_classes,
    check_samples,
    encode_target,
    listing,
)
from tas.core.data.scratch import ScratchArray

#: Candidate CSV delimiters, in order of preference when the header splits equally well on several.
DELIMITERS = (",", ";", "\t", "|")
#: Target codes ride in the float32 table: exact up to 2**24 distinct values.
_EXACT_CODES = 1 << 24
#: Characters of CSV text parsed at a time: a CSV of any size is read holding about this much
#: of it and its table (plus its label codes, 4 bytes a row), the features going to a
#: memory-mapped file.
PIECE_CHARS = 4 << 20
#: File name extensions a text upload may have without `format` given ("" for none).
TEXT_SUFFIXES = ("", ".csv", ".tsv", ".txt", ".dat")


def text_lines(fh: IO[str]) -> Iterator[str]:
    """Lines, with UnicodeDecodeError turned into an UploadError that says where."""
    try:
        yield from fh
    except UnicodeDecodeError as exc:
        raise UploadError(
            f"the CSV is not UTF-8 text (byte {exc.object[exc.start : exc.start + 1]!r});"
            " save it as UTF-8"
        ) from None


def sniff_delimiter(first_line: str) -> str:
    """The candidate that splits the header into the most fields (',' on a tie)."""
    counts = [_fields(first_line, d) for d in DELIMITERS]
    return DELIMITERS[counts.index(max(counts))]


def _fields(line: str, delimiter: str) -> int:
    """How many fields `delimiter` splits the line into; 1 for a line it leaves as one field
    longer than the csv module takes (a wide header, tried with a delimiter it does not hold)."""
    try:
        return len(next(csv.reader([line], delimiter=delimiter), []))
    except csv.Error:
        return 1


def _header(lines: Iterator[str], what: str, max_columns: int) -> tuple[str, list[str], int]:
    """(delimiter, column names, lines up to and with the header) from the first non-blank line;
    blank names become column_<i>. The columns are counted before the line is parsed: a header of
    a million names is refused as what it is, not as one field over the csv module's limit."""
    for count, line in enumerate(lines, start=1):
        if line.strip():
            columns = max(line.count(d) for d in DELIMITERS) + 1
            if columns > max_columns:
                raise UploadError(
                    f"{what} has {columns:,} columns; at most {max_columns:,}"
                    " (TAS_UPLOAD_MAX_COLUMNS)"
                )
            try:
                delimiter = sniff_delimiter(line)
                cells = next(csv.reader([line], delimiter=delimiter))
            except csv.Error as exc:
                raise UploadError(f"{what}'s header row cannot be read: {exc}") from None
            return delimiter, [c.strip() or f"column_{i + 1}" for i, c in enumerate(cells)], count
    raise UploadError(f"{what} is empty (no header row)")


def find_column(names: list[str], wanted: str, what: str) -> int | None:
    """The index of column `wanted` (exact, else a unique case-insensitive match); a name given twice
    is ambiguous."""
    if names.count(wanted) > 1:
        raise UploadError(
            f"column {wanted!r} appears {names.count(wanted)} times in {what}; rename all but one",
            field="target",
        )
    if wanted in names:
        return names.index(wanted)
    folded = [i for i, n in enumerate(names) if n.casefold() == wanted.casefold()]
    return folded[0] if len(folded) == 1 else None


def _target_index(names: list[str], target: str | None, what: str) -> int:
    if target is not None:
        t = find_column(names, target, what)
        if t is None:
            raise UploadError(
                f"column {target!r} not found; columns: {listing(names)}", field="target"
            )
        return t
    for default in ("target", "label"):
        t = find_column(names, default, what)
        if t is not None:
            return t
    raise UploadError(
        f"no target given and no column named 'target' or 'label'; columns: {listing(names)}",
        field="target",
        hint="give target: the name of the label column",
    )


def read(path: Path, options: ReadOptions, limits: UploadLimits) -> Contents:
    """The header with the csv module, then the table in numpy's C parser (float32, the target
    column interned to codes by a converter), `PIECE_CHARS` of it at a time: each piece is checked
    (column count, finite features, the sample limit) and its features written to a memory-mapped
    scratch file (`ScratchArray`), so a CSV larger than memory is read holding one piece."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        lines = text_lines(fh)
        delimiter, names, skip = _header(lines, "the CSV", limits.max_columns)
        if not any(line.strip() for line in lines):
            raise UploadError("the CSV has a header row but no data rows")
    t = _target_index(names, options.target, "the CSV")
    features = [n for i, n in enumerate(names) if i != t]
    if not features:
        raise UploadError(
            f"the CSV has only the target column {names[t]!r}; it needs feature columns too"
        )
    labels = Codes()
    code_pieces: list[np.ndarray] = []
    with ScratchArray((len(features),), np.float32, near=path) as scratch:
        try:
            with path.open(encoding="utf-8-sig") as fh:
                for _ in range(skip):
                    fh.readline()
                for piece in _pieces(fh):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)  # a piece of blank lines
                        table = np.loadtxt(
                            piece,
                            delimiter=delimiter,
                            quotechar='"',
                            comments=None,
                            dtype=np.float32,
                            ndmin=2,
                            converters={t: labels},
                        )
                    del piece
                    if table.shape[0] == 0:
                        continue
                    if table.shape[1] != len(names):
                        raise ValueError("column count")
                    if scratch.rows + table.shape[0] > limits.max_samples:
                        raise UploadError(
                            f"the CSV holds more than {limits.max_samples:,} samples; the limit"
                            f" is {limits.max_samples:,} (TAS_UPLOAD_MAX_SAMPLES)",
                            status=413,
                        )
                    code_pieces.append(table[:, t].astype(np.int32))
                    X = np.delete(table, t, axis=1)
                    del table
                    _check_finite(X, features, scratch.rows)
                    scratch.append(X)
        except ValueError as exc:  # UnicodeDecodeError too: the diagnosis says where
            raise _diagnose_csv(path, delimiter, names, t, exc) from None
        check_samples(scratch.rows, limits, "the CSV")
        if len(labels.index) > _EXACT_CODES:
            raise UploadError(
                f"the target column {names[t]!r} has over {_EXACT_CODES:,} distinct values"
            )
        # int32 codes (exact: fewer than 2**24 labels): the label side is the one array that
        # grows with the rows, besides y itself.
        codes = np.concatenate(code_pieces)
        del code_pieces
        X_all = scratch.array()
    target = names[t]
    empty = labels.first_row(codes, "")
    if empty is not None:
        raise UploadError(f"empty value in the target column {target!r}, row {empty}")
    task, y, class_names = encode_target(
        labels.keys(), codes, options.task, "count", f"target column {target!r}"
    )
    counts = (
        check_classes(y, class_names, f"target column {target!r}", "target")
        if class_names is not None
        else None
    )
    return Contents(
        arrays=Arrays(torch.from_numpy(X_all), y),
        task=task,
        kind="tabular",
        class_names=class_names,
        class_counts=counts,
        feature_names=features,
        target=target,
    )


def _pieces(fh: IO[str]) -> Iterator[list[str]]:
    """The rest of the file as lists of whole lines, about PIECE_CHARS characters each (a line
    longer than that is one piece): what numpy's parser is given at a time."""
    rest = ""
    while True:
        chunk = fh.read(PIECE_CHARS)
        text = rest + chunk
        if not chunk:
            if text:
                yield text.splitlines()
            return
        cut = text.rfind("\n") + 1
        if cut == 0:
            rest = text  # no line ends in it yet: read on
            continue
        rest = text[cut:]
        yield text[:cut].splitlines()


def _check_finite(X: np.ndarray, features: list[str], rows_before: int) -> None:
    finite = np.isfinite(X)
    if not finite.all():
        r, c = divmod(int(np.argmin(finite.reshape(-1))), X.shape[1])
        raise UploadError(
            f"column {features[c]!r} has a missing or non-finite value ({X[r, c]}) in row"
            f" {rows_before + r + 1}; fill or drop it"
        )


def _diagnose_csv(
    path: Path, delimiter: str, names: list[str], t: int, exc: ValueError
) -> UploadError:
    """The fast parser failed: read the file again with the csv module to say exactly where — a row
    of the wrong length, then non-numeric feature columns (all of them), then empty cells."""
    bad: dict[int, tuple[str, int]] = {}
    empty: dict[int, int] = {}
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(text_lines(fh), delimiter=delimiter)
        next((cells for cells in reader if cells), None)  # the header
        row = 0
        for cells in reader:
            if not cells:  # an empty line, which numpy skips too
                continue
            row += 1
            if len(cells) != len(names):
                values = f"{len(cells)} value" + ("" if len(cells) == 1 else "s")
                return UploadError(
                    f"row {row} (line {reader.line_num}) has {values}; the header has"
                    f" {len(names)} columns"
                )
            for i, cell in enumerate(cells):
                if i == t or i in bad:
                    continue
                value = cell.strip()
                if not value:
                    empty.setdefault(i, row)
                    continue
                try:
                    float(value)
                except ValueError:
                    bad[i] = (cell, row)
    if bad:
        first = min(bad.values(), key=lambda vr: vr[1])
        return UploadError(
            f"non-numeric feature columns: {listing([names[i] for i in sorted(bad)])} (first bad"
            f" value {first[0]!r} in row {first[1]})",
            hint="features must be numbers: encode text columns (e.g. one-hot) or drop them; if one"
            " of them is the label, give it as target",
        )
    if empty:
        where = ", ".join(f"{names[i]!r} (row {r})" for i, r in sorted(empty.items())[:10])
        return UploadError(
            f"empty values in feature columns: {where}", hint="fill or drop the missing values"
        )
    return UploadError(f"the CSV cannot be read: {exc}")


def sniff(probe: Probe) -> bool:
    """Text with a table's extension (or none): what is not a ZIP and not a known binary type."""
    return probe.suffix in TEXT_SUFFIXES


FORMAT = Format(
    "csv",
    container="text",
    sniff=sniff,
    read=read,
    refuses={"size": "size applies to images; this upload is a CSV"},
)
