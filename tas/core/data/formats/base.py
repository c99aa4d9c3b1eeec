"""What an upload format is: how it is recognised (`sniff` on a `Probe`) and how it is read (a
`Reader` from the file to `Contents`). `tas.core.data.formats.registry` lists them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from tas.core.data.archive import UploadLimits
from tas.core.data.dataset import Arrays, Kind, Task

#: The first bytes of an upload that detection looks at (magic numbers, a text's first lines).
SNIFF_BYTES = 8192

#: The refusal of `target` by a format whose labels do not come from a column.
NO_TARGET = (
    "target applies to CSV and annotations uploads; a {name} upload takes its labels from {labels}"
)


class ReadOptions(Protocol):
    """What a reader is asked for (the format is decided already). None means infer it."""

    @property
    def target(self) -> str | None: ...

    @property
    def task(self) -> Task | None: ...

    @property
    def size(self) -> tuple[int, int] | None: ...


@dataclass
class Contents:
    """What a reader found. `read_upload` adds the format and the resolved options around it."""

    #: X (N, *input_shape), compact: uint8 pixels for image archives and uint8 image NPZs (read
    #: as pixel / 255 per batch), float32 otherwise; y int64 (N,) for classes, float32 (N, d) for
    #: regression.
    arrays: Arrays
    task: Task
    kind: Kind
    class_names: list[str] | None = None
    class_counts: dict[str, int] | None = None
    feature_names: list[str] | None = None
    #: The label column as it was decided (CSV, annotations), so a re-read decides nothing anew;
    #: None where the labels are not a column.
    target: str | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.arrays.X.shape[1:])


@dataclass(frozen=True)
class Probe:
    """What detection knows of an upload before reading it: its first bytes, the extension of the
    client's file name (lower case, with the dot), and for a ZIP the names of its data files
    (directories and archivers' junk left out)."""

    head: bytes
    suffix: str
    entries: tuple[str, ...] = ()


#: A format's reader: the file, the options (resolved where given), the limits it must keep to.
Reader = Callable[[Path, ReadOptions, UploadLimits], Contents]


@dataclass(frozen=True)
class Format:
    """One upload format. `container` says which files it can be: a ZIP archive, or text (anything
    that is neither a ZIP nor a known binary type). Among the formats of the file's container,
    `detect` picks the first, in registry order, whose `sniff` answers True."""

    name: str
    container: Literal["zip", "text"]
    sniff: Callable[[Probe], bool]
    read: Reader
    #: Options this format has no use for, each with the message that refuses it (the option is
    #: the form field blamed), before the file is read.
    refuses: Mapping[str, str] = field(default_factory=dict)
