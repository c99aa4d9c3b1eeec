"""Safe ZIP reading for uploads: every entry is judged from the central directory before one byte of
its data is read, and nothing is ever extracted to disk (entries are decoded straight from the zip).

Why the declared sizes can be trusted: `zipfile` stops every read at the entry's declared
`file_size` and checks the CRC at the end, so an entry that lies about its size fails to read instead
of inflating past what was checked here.

`UploadError` and `UploadLimits` live here, in the lowest of the upload modules, so that the archive,
image and format readers share them without an import cycle; `tas.core.data.formats.upload` re-exports
both."""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tas.core.errors import DataError

#: Ratio checks apply to entries (and archives) that unpack to more than this: a small file of
#: repeated text legitimately compresses far, and a bomb that unpacks to under 1 MiB is no bomb.
RATIO_MIN_BYTES = 1 << 20

#: Names that archivers add beside the data: never samples, never errors.
JUNK_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})

_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may cost to read. Each is checked before the work it bounds (archive sizes from
    the central directory, pixels from an image's header, samples and array bytes before allocating)."""

    max_entries: int = 200_000
    max_uncompressed_bytes: int = 4 << 30
    #: Uncompressed / compressed, per entry and for the whole archive (a zip bomb's signature).
    max_ratio: float = 200.0
    #: One image, from its header, before it is decoded.
    max_pixels: int = 50_000_000
    #: All of an upload's images together, from their headers, before the first is decoded: PNG's
    #: own compression hides from the zip ratio check, so a sub-MB archive of eight 6000×6000 PNGs
    #: would otherwise cost seconds of CPU and a GB of memory per image decoded.
    max_total_pixels: int = 250_000_000
    max_samples: int = 5_000_000
    #: Columns of a CSV, counted on its header line before any field is parsed.
    max_columns: int = 100_000
    #: The decoded float32 X (N × sample size × 4 bytes), known before it is allocated: a few MB of
    #: PNGs can decode to hundreds of GB, which no per-entry zip ratio sees.
    max_array_bytes: int = 16 << 30


class UploadError(DataError):
    """An upload that cannot be used as sent. `field` is the form field to blame ("file", "target",
    "task", "size", "format"); `status` the HTTP answer: 422 bad content, 415 an unsupported type,
    413 past a limit. A `DataError`, so a job that re-reads an upload reports it the same way."""

    def __init__(
        self, message: str, field: str = "file", status: int = 422, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.field = field
        self.status = status


def num(x: float) -> str:
    """A count in short scientific form, as a person writes it: 1.6e9, 5e7, 200."""
    if abs(x) < 1e5:
        return f"{x:g}"
    mantissa, _, exp = f"{x:.3g}".partition("e")
    return f"{mantissa}e{int(exp)}" if exp else mantissa


def nbytes(n: float) -> str:
    """Bytes in binary units: 4 GiB, 50.0 MiB, 812 B."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def is_junk(name: str) -> bool:
    """macOS resource forks, dotfiles (.DS_Store, ._x.png) and Windows thumbnails: skipped silently."""
    return any(p in JUNK_NAMES or p.startswith(".") for p in name.split("/") if p)


def entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why this entry must not be read (a path that escapes, a link, encryption), or None."""
    name = info.orig_filename.replace("\\", "/")  # before zipfile cut the name at a NUL
    if "\x00" in name:
        return f"entry {name!r} has a NUL byte in its name"
    if name.startswith("/") or _DRIVE.match(name):
        return f"entry {name!r} is an absolute path; entries must be relative"
    if ".." in name.split("/"):
        return f"entry {name!r} escapes the archive (a '..' component)"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return f"entry {name!r} is a symbolic link; links are refused"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return f"entry {name!r} is not a regular file (a device, socket or pipe)"
    if info.flag_bits & 0x1:
        return f"entry {name!r} is encrypted; upload an archive without a password"
    return None


def _ratio(info: zipfile.ZipInfo) -> float:
    return info.file_size / max(info.compress_size, 1)


def check_archive(infos: list[zipfile.ZipInfo], limits: UploadLimits) -> None:
    """Refuse the archive from its central directory alone: entry count, each entry's name and type,
    the total unpacked size and the compression ratios (each entry's, then the whole archive's)."""
    if len(infos) > limits.max_entries:
        raise UploadError(
            f"the archive has {len(infos):,} entries; the limit is {limits.max_entries:,}",
            status=413,
        )
    total = packed = 0
    for info in infos:
        problem = entry_problem(info)
        if problem:
            raise UploadError(problem)
        if info.file_size > RATIO_MIN_BYTES and _ratio(info) > limits.max_ratio:
            raise UploadError(
                f"entry {info.filename!r} expands {_ratio(info):,.0f}× ({nbytes(info.file_size)} from"
                f" {nbytes(info.compress_size)}); the limit is {limits.max_ratio:g}× (a zip bomb?)",
                status=413,
            )
        total += info.file_size
        packed += info.compress_size
        if total > limits.max_uncompressed_bytes:
            raise UploadError(
                f"the archive unpacks to more than {nbytes(limits.max_uncompressed_bytes)}"
                f" (passed at entry {info.filename!r}); the limit is"
                f" {nbytes(limits.max_uncompressed_bytes)}",
                status=413,
            )
    if total > RATIO_MIN_BYTES and total / max(packed, 1) > limits.max_ratio:
        biggest = max(infos, key=lambda i: i.file_size)
        raise UploadError(
            f"the archive expands {total / max(packed, 1):,.0f}× ({nbytes(total)} from"
            f" {nbytes(packed)}; largest entry {biggest.filename!r}); the limit is"
            f" {limits.max_ratio:g}× (a zip bomb?)",
            status=413,
        )


def open_archive(path: Path, limits: UploadLimits, what: str = "ZIP archive") -> zipfile.ZipFile:
    """The archive, opened and checked (`check_archive`); the caller closes it."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, ValueError, EOFError) as exc:
        raise UploadError(f"the file is not a readable {what}: {exc}") from None
    try:
        check_archive(zf.infolist(), limits)
    except BaseException:
        zf.close()
        raise
    return zf


def files(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The archive's regular files that may be data: no directories, no junk (`is_junk`)."""
    return [i for i in zf.infolist() if not i.is_dir() and not is_junk(i.filename)]


def read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """One entry's bytes; a corrupt entry (bad CRC, broken deflate stream) names itself."""
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise UploadError(f"entry {info.filename!r} cannot be read: {exc}") from None


def parts(name: str) -> tuple[str, ...]:
    """An entry name's path components ('a/b/c.png' → ('a', 'b', 'c.png'))."""
    return PurePosixPath(name.replace("\\", "/")).parts
