"""A ZIP of images with an annotations CSV: rows of file name and label, the image being
img_dir/file_name as a custom Dataset reads it. Labels that are integers or text give classes,
non-integral numbers regression. Images are kept as uint8 pixels, a byte a pixel, read as pixel / 255
per batch as the built-in image sets are; all grey gives C=1, any colour image makes every image RGB
(C=3)."""

from __future__ import annotations

import csv
import io
import itertools
import posixpath
import zipfile
from pathlib import Path

import numpy as np
import torch

from tas.core.data.archive import UploadError, UploadLimits, files, open_archive
from tas.core.data.dataset import Arrays
from tas.core.data.formats.base import Contents, Format, Probe, ReadOptions
from tas.core.data.formats.common import (
    Codes,
    check_classes,
    check_samples,
    encode_target,
    listing,
)
from tas.core.data.formats.csvfile import find_column, sniff_delimiter, text_lines
from tas.core.data.images import read_images

#: Folders beside an annotations CSV that may hold its images (a custom Dataset's usual img_dir).
IMAGE_DIRS = ("", "images", "img", "imgs")


def _normalise(name: str) -> str:
    return posixpath.normpath(name.strip().replace("\\", "/")).lstrip("/")


def read(path: Path, options: ReadOptions, limits: UploadLimits) -> Contents:
    """One CSV in the archive; each row names an image (relative to the CSV's folder, or an images/,
    img/ or imgs/ folder beside it) and its label. The first row is a header unless its first cell
    names an image in the archive. Images the CSV does not name are ignored."""
    with open_archive(path, limits) as zf:
        entries = files(zf)
        csvs = [i for i in entries if i.filename.lower().endswith(".csv")]
        if len(csvs) != 1:
            found = listing([i.filename for i in csvs], 5)
            raise UploadError(
                "the archive holds no annotations CSV (file name, label)"
                if not csvs
                else f"the archive holds {len(csvs)} CSV files ({found}); keep only the annotations"
                " file",
            )
        table = csvs[0].filename
        by_name = {_normalise(i.filename): i for i in entries if i is not csvs[0]}
        base = posixpath.dirname(table)
        dirs = [posixpath.join(base, d) if d else base for d in IMAGE_DIRS]

        def resolve(cell: str) -> zipfile.ZipInfo | None:
            for d in dirs:
                info = by_name.get(_normalise(posixpath.join(d, cell.strip())))
                if info is not None:
                    return info
            return None

        with zf.open(csvs[0]) as raw:
            lines = text_lines(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
            first = next((line for line in lines if line.strip()), None)
            if first is None:
                raise UploadError(f"the annotations CSV {table!r} is empty")
            delimiter = sniff_delimiter(first)
            reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
            head = next(reader)
            header = None if head and resolve(head[0]) is not None else head
            label_col = _label_column(header, options.target, table)
            rows = reader if header is not None else itertools.chain([head], reader)
            infos, label_codes, labels = [], [], Codes()
            for r, cells in enumerate((c for c in rows if any(x.strip() for x in c)), start=1):
                if len(cells) <= label_col:
                    raise UploadError(
                        f"row {r} of {table!r} has {len(cells)} value(s); it needs a file name and"
                        " a label"
                    )
                info = resolve(cells[0])
                if info is None:
                    looked = ", ".join(repr(d + "/" if d else "(the archive root)") for d in dirs)
                    raise UploadError(
                        f"row {r} of {table!r} names {cells[0].strip()!r}, which is not in the"
                        f" archive (looked in {looked})"
                    )
                if not cells[label_col].strip():
                    raise UploadError(f"row {r} of {table!r} has an empty label")
                infos.append(info)
                label_codes.append(labels(cells[label_col]))
                if len(infos) > limits.max_samples:
                    check_samples(len(infos), limits, f"the annotations CSV {table!r}")
        check_samples(len(infos), limits, f"the annotations CSV {table!r}")
        column = header[label_col].strip() if header is not None else str(label_col)
        what = f"label column {column!r} of {table!r}"
        task, y, class_names = encode_target(
            labels.keys(), np.asarray(label_codes, dtype=np.int64), options.task, "integral", what
        )
        counts = check_classes(y, class_names, what, "target") if class_names else None
        X = read_images(zf, infos, options.size, limits)
    return Contents(
        arrays=Arrays(torch.from_numpy(X), y),
        task=task,
        kind="image",
        class_names=class_names,
        class_counts=counts,
        target=column,
    )


def _label_column(header: list[str] | None, target: str | None, table: str) -> int:
    """The label column: `target` by name (by 0-based position when the CSV has no header), else
    the second column, as a custom Dataset's `iloc[idx, 1]` reads it."""
    if target is None:
        return 1
    if header is None:
        if target.strip().isdigit() and int(target) >= 1:
            return int(target)
        raise UploadError(
            f"the annotations CSV {table!r} has no header row, so target must be the label"
            f" column's position (1 for the second column, counting from 0); got {target!r}",
            field="target",
        )
    names = [c.strip() for c in header]
    t = find_column(names, target, f"the annotations CSV {table!r}")
    if t is None:
        raise UploadError(f"column {target!r} not found; columns: {listing(names)}", field="target")
    if t == 0:
        raise UploadError(
            f"column {target!r} is the file name column; the label must be another column",
            field="target",
        )
    return t


def sniff(probe: Probe) -> bool:
    """A ZIP with a CSV in it."""
    return any(n.lower().endswith(".csv") for n in probe.entries)


FORMAT = Format("image_annotations", container="zip", sniff=sniff, read=read)
