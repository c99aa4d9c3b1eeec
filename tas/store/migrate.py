"""Alembic upgrade to head, for `tas migrate` and for `tas serve` on start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config


def _migrations_dir() -> Path:
    """Alembic's folder: `tas/migrations` in an installed wheel (setuptools maps the repository's
    top-level `migrations/` there, see pyproject.toml), the repository's own folder in a checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(f"no Alembic migrations next to {package}")


MIGRATIONS_DIR = _migrations_dir()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)
