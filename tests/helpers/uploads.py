"""Uploads under test: settings with small limits (so the limit tests stay small), the temp files an
upload must not leave behind, and the parts of a 422 the tests read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
