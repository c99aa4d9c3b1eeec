"""A failed job's error is shown to whoever submitted it: the server's directories in it are
replaced by the settings that name them, and no traceback (with the server's file paths) is kept."""

from __future__ import annotations

from pathlib import Path

from tas.settings import Settings
from worker.runner import public_error


def test_server_directories_become_their_setting_names(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    uploads = settings.resolved_uploads_dir
    error = {
        "type": "FileNotFoundError",
        "message": f"collect stage failed: [Errno 2] No such file or directory: '{uploads}/ab/x.csv'"
        f" (weights in {settings.resolved_weights_dir}, a job in"
        f" {settings.resolved_artifact_dir}/jobs/j1, {settings.data_dir.resolve()}/tas.db)",
        "hint": f"see {settings.resolved_datasets_dir}",
        "stage": "collect",
    }
    out = public_error(error, settings)
    assert str(tmp_path) not in out["message"] + out["hint"]
    assert "'TAS_UPLOADS_DIR/ab/x.csv'" in out["message"]
    assert "TAS_WEIGHTS_DIR" in out["message"] and "TAS_ARTIFACT_DIR/jobs/j1" in out["message"]
    assert "TAS_DATA_DIR/tas.db" in out["message"] and out["hint"] == "see TAS_DATASETS_DIR"
    assert (out["type"], out["stage"]) == ("FileNotFoundError", "collect")


def test_only_whole_directory_names_are_replaced(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    other = f"{settings.data_dir.resolve()}-old/file"  # a sibling, not the data dir
    assert public_error({"message": other}, settings)["message"] == other
