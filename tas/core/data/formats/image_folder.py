"""A ZIP of class folders: cats/1.png, dogs/x.jpg (under shared root folders, if any), the class
being the first folder below the root. Files beside the class folders (a README) are ignored; a file
inside a class folder that is not .png/.jpg/.jpeg is refused rather than silently left out of that
class. Images are kept as uint8 pixels, a byte a pixel, read as pixel / 255 per batch as the built-in
image sets are; all grey gives C=1, any colour image makes every image RGB (C=3)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from tas.core.data.archive import UploadError, UploadLimits, files, open_archive, parts
from tas.core.data.dataset import Arrays
from tas.core.data.formats.base import NO_TARGET, Contents, Format, Probe, ReadOptions
from tas.core.data.formats.common import check_classes, check_samples, listing
from tas.core.data.images import is_image_name, read_images


def _common_root(paths: list[tuple[str, ...]]) -> int:
    """How many leading folders every image shares above its class folder (data/cats/1.png → 1)."""
    depth = 0
    while paths and all(len(p) > depth + 2 for p in paths) and len({p[depth] for p in paths}) == 1:
        depth += 1
    return depth


def read(path: Path, options: ReadOptions, limits: UploadLimits) -> Contents:
    """cats/1.png, dogs/x.jpg (under shared root folders, if any): the class is the first folder
    below the root. Files beside the class folders are ignored; a non-image inside one is refused."""
    if options.task == "regression":
        raise UploadError(
            "class folders give class labels; for regression upload an annotations CSV with numeric"
            " labels, or an NPZ",
            field="task",
        )
    with open_archive(path, limits) as zf:
        entries = files(zf)
        images = [(parts(i.filename), i) for i in entries if is_image_name(i.filename)]
        if not images:
            others = listing([i.filename for i in entries], 5) or "nothing"
            raise UploadError(
                f"the archive holds no PNG or JPEG images (found: {others})",
                hint="put each class's images in a folder named after the class: cats/1.png",
            )
        root = _common_root([p for p, _ in images])
        prefix = images[0][0][:root]
        samples: list[tuple[str, str, zipfile.ZipInfo]] = []
        for p, info in images:
            rel = p[root:]
            if len(rel) < 2:
                raise UploadError(
                    f"image {info.filename!r} is not inside a class folder; put each class's images"
                    " in a folder named after the class (cats/1.png)"
                )
            samples.append((rel[0], info.filename, info))
        classes = sorted({c for c, _, _ in samples})
        for info in entries:
            p = parts(info.filename)
            inside = len(p) > root + 1 and p[:root] == prefix and p[root] in classes
            if inside and not is_image_name(info.filename):
                raise UploadError(
                    f"entry {info.filename!r} in class folder {p[root]!r} is not a PNG or JPEG image"
                    " (by its name); allowed: .png, .jpg, .jpeg",
                    hint="convert it to PNG/JPEG or remove it from the archive",
                )
        check_samples(len(samples), limits, "the archive")
        samples.sort(key=lambda s: (s[0], s[1]))
        index = {c: k for k, c in enumerate(classes)}
        y = torch.tensor([index[c] for c, _, _ in samples], dtype=torch.int64)
        counts = check_classes(y, classes, "the archive", "file")
        X = read_images(zf, [info for _, _, info in samples], options.size, limits)
    return Contents(
        arrays=Arrays(torch.from_numpy(X), y),
        task="classification",
        kind="image",
        class_names=classes,
        class_counts=counts,
    )


def sniff(probe: Probe) -> bool:
    """Any ZIP without a CSV in it (one with a CSV is an annotations archive)."""
    return not any(n.lower().endswith(".csv") for n in probe.entries)


FORMAT = Format(
    "image_folder",
    container="zip",
    sniff=sniff,
    read=read,
    refuses={"target": NO_TARGET.format(name="image_folder", labels="the class folder names")},
)
