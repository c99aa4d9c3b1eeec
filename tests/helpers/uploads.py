"""Uploads under test: settings with small limits (so the limit tests stay small), the temp files an
upload must not leave behind, the parts of a 422 the tests read, archives built from scratch, and the
upload reader called directly (`read`, or `refused` for the message of the refusal it must raise)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest

from tas.core.data.formats.upload import (
    ParsedUpload,
    UploadError,
    UploadLimits,
    UploadOptions,
    read_upload,
)
from tas.core.errors import DataError
from tas.settings import Settings
from tas.store.migrate import upgrade


def small_upload_settings(tmp_path: Path) -> Settings:
    """Migrated settings under `tmp_path/var`; a small file reaches its upload limits."""
    s = Settings(
        data_dir=tmp_path / "var",
        max_upload_mb=1,
        upload_max_uncompressed_mb=4,
        upload_max_ratio=50.0,
        upload_max_entries=50,
        upload_max_pixels=250_000,
    )
    s.ensure_dirs()
    upgrade(s.resolved_database_url)
    return s


def leftovers(settings: Settings) -> list[Path]:
    """Temp files of uploads: none may outlive its request."""
    tmp = settings.resolved_uploads_dir / ".tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


def msgs(r: Any) -> str:
    """Every message of an error response, joined."""
    detail = r.json()["detail"]
    return " ".join(d["msg"] for d in detail) if isinstance(detail, list) else str(detail)


def locs(r: Any) -> list[list[Any]]:
    """The `loc` of each problem in a 422."""
    return [d["loc"] for d in r.json()["detail"]]


def make_zip(path: Path, entries: dict[str, bytes], compress: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compress) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def read(path: Path, options: UploadOptions | None = None, **limits: Any) -> ParsedUpload:
    return read_upload(path, path.name, options or UploadOptions(), UploadLimits(**limits))


def refused(
    path: Path,
    options: UploadOptions | None = None,
    *,
    field: str = "file",
    status: int = 422,
    **limits: Any,
) -> str:
    with pytest.raises(UploadError) as err:
        read(path, options, **limits)
    assert (err.value.field, err.value.status) == (field, status), err.value.message
    assert isinstance(err.value, DataError)
    return err.value.message
