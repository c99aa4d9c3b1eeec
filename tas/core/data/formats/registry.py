"""The upload formats, by name, and `detect`: which of them an uploaded file is.

`FORMATS` is the one list: its order is the order the `format` option's choices are listed in, and
the order in which formats of one container are sniffed (the first whose `sniff` answers wins, so a
ZIP that `npz` claims is never taken for images). Detection refuses what no format reads (a single
.npy, an Office document, a gzip, an image that is not in a ZIP, ...) with a 415 that says what the
file is."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tas.core.data.archive import UploadError, UploadLimits, files, open_archive
from tas.core.data.formats import csvfile, image_annotations, image_folder, npz
from tas.core.data.formats.base import SNIFF_BYTES, Format, Probe

FORMATS: dict[str, Format] = {
    f.name: f for f in (csvfile.FORMAT, npz.FORMAT, image_folder.FORMAT, image_annotations.FORMAT)
}

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
#: Magic bytes of files that are surely not a CSV, NPZ or ZIP, to name them in the 415.
_FOREIGN = (
    (b"\x1f\x8b", "a gzip file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x89PNG", "a single PNG image"),
    (b"\xff\xd8\xff", "a single JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF"),
    (b"PAR1", "a Parquet file"),
    (b"\x89HDF", "an HDF5 file"),
    (b"\xd0\xcf\x11\xe0", "an old Excel/Office file"),
    (b"\x80", "a Python pickle"),
    (b"\xff\xfe", "UTF-16 text (save it as UTF-8)"),
    (b"\xfe\xff", "UTF-16 text (save it as UTF-8)"),
)


def detect(path: Path, filename: str, given: str | None, limits: UploadLimits) -> Format:
    """The format from the magic bytes, then the name and (for a ZIP) the entry names; `given` (a
    name in `FORMATS`) is taken as it is when the file's container fits it. A ZIP is checked
    (`open_archive`) before its names are trusted."""
    with path.open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
    suffix = Path(filename or "").suffix.lower()
    chosen = FORMATS[given] if given is not None else None
    if head.startswith(_ZIP_MAGIC):
        if chosen is not None and chosen.container != "zip":
            raise UploadError(
                f"format {given!r} was given, but the file is a ZIP archive", field="format"
            )
        if chosen is not None:
            return chosen
        with open_archive(path, limits) as zf:
            names = [i.filename for i in files(zf)]
        if "[Content_Types].xml" in names:
            raise UploadError(
                "an Excel/Office document is not supported; export the sheet as CSV", status=415
            )
        return _sniff(Probe(head, suffix, tuple(names)), "zip", suffix)
    if head.startswith(b"\x93NUMPY"):
        raise UploadError(
            "a .npy file holds one array; save X and y together with np.savez(path, X=X, y=y)",
            status=415,
        )
    foreign = next((what for magic, what in _FOREIGN if head.startswith(magic)), None)
    binary = b"\x00" in head or foreign is not None
    if chosen is not None and chosen.container != "text":
        what = foreign or ("a binary file" if binary else "text")
        raise UploadError(
            f"format {given!r} was given, but the file is not a ZIP/NPZ archive (it is {what})",
            field="format",
        )
    if binary:
        allowed = "allowed: CSV, NPZ, or a ZIP of PNG/JPEG images"
        if head.startswith((b"\x89PNG", b"\xff\xd8\xff")):
            allowed = "put images in a ZIP, one folder per class (cats/1.png)"
        raise UploadError(
            f"unsupported file type: {foreign or 'a binary file'}; {allowed}", status=415
        )
    if chosen is not None:
        return chosen
    return _sniff(Probe(head, suffix), "text", suffix)


def _sniff(probe: Probe, container: Literal["zip", "text"], suffix: str) -> Format:
    for fmt in FORMATS.values():
        if fmt.container == container and fmt.sniff(probe):
            return fmt
    raise UploadError(
        f"unsupported file type {suffix!r}; allowed: .csv, .npz, .zip (or give format)",
        status=415,
    )
