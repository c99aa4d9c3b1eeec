"""Uploads decoded a bounded piece at a time into memory-mapped scratch files: a CSV read in many
pieces gives exactly the table read whole, with the same refusals and row numbers, and images land
in their rows whatever the archive order."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tas.core.data.formats import csvfile
from tas.core.data.formats.upload import UploadError, UploadLimits, UploadOptions, read_upload
from tas.core.data.scratch import ScratchArray


def test_scratch_rows_appended_and_put_read_back_mapped(tmp_path: Path) -> None:
    near = tmp_path / "upload.part"
    with ScratchArray((2, 3), np.float32, near=near) as s:
        s.append(np.arange(12, dtype=np.float32).reshape(2, 2, 3))
        s.append(np.ones((1, 2, 3), dtype=np.float32))
        out = s.array()
    assert isinstance(out, np.memmap) and out.shape == (3, 2, 3)
    assert out[0, 1, 2] == 5 and out[2].sum() == 6
    out[0] = 7  # copy-on-write: writable, as torch wants
    assert torch.from_numpy(out)[0, 0, 0] == 7
    assert list(tmp_path.iterdir()) == []  # no name was left beside the upload
    with ScratchArray((2,), np.float32, near=None) as s:
        s.put(3, np.array([1, 2], dtype=np.float32))
        s.put(0, np.array([5, 6], dtype=np.float32))
        got = s.array(4)
    assert got.tolist() == [[5, 6], [0, 0], [0, 0], [1, 2]]
    with ScratchArray((2,), np.float32, near=None) as s:
        assert s.array().shape == (0, 2)
        with pytest.raises(ValueError, match="expected 1 rows"):
            ScratchArray((2,), np.float32, near=None).append(np.zeros((1, 3)))


def _csv(tmp_path: Path, rows: list[str], name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    return path


def read(path: Path, **options: str) -> object:
    return read_upload(path, path.name, UploadOptions(**options), UploadLimits())


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of about 20 rows, so a few thousand rows cross many piece boundaries."""
    monkeypatch.setattr(csvfile, "PIECE_CHARS", 300)


def test_a_csv_read_in_pieces_is_the_table_read_whole(
    tmp_path: Path, small_pieces: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5000):
        rows.append(f"{rng.normal():.5f},{rng.normal():.5f},{'abc'[i % 3]}")
        if i in (1023, 1024, 3000):
            rows += ["", ""]  # blank lines at and around piece boundaries
    rows += [""] * 2100  # whole pieces of blank lines before the end
    path = _csv(tmp_path, rows)
    pieces = read(path)
    monkeypatch.setattr(csvfile, "PIECE_CHARS", 1 << 30)
    whole = read(path)
    assert pieces.schema() == whole.schema()  # type: ignore[attr-defined]
    assert torch.equal(pieces.arrays.X, whole.arrays.X)  # type: ignore[attr-defined]
    assert torch.equal(pieces.arrays.y, whole.arrays.y)  # type: ignore[attr-defined]
    assert pieces.arrays.X.shape == (5000, 2)  # type: ignore[attr-defined]


def test_refusals_name_the_row_across_pieces(tmp_path: Path, small_pieces: None) -> None:
    ok = [f"{i},{i % 7},{'ab'[i % 2]}" for i in range(3000)]
    bad = [*ok[:2500], "1,nan,a", *ok[2500:]]
    with pytest.raises(UploadError, match="in row 2501"):
        read(_csv(tmp_path, bad))
    short = [*ok[:2100], "1,a", *ok[2100:]]
    with pytest.raises(UploadError, match=r"row 2101 .* has 2 values"):
        read(_csv(tmp_path, short))
    text = [*ok[:1500], "1,x,a", *ok[1500:]]
    with pytest.raises(UploadError, match=r"non-numeric feature columns: b .*row 1501"):
        read(_csv(tmp_path, text))
    with pytest.raises(UploadError, match="more than 2,000 samples") as err:
        read_upload(_csv(tmp_path, ok), "t.csv", UploadOptions(), UploadLimits(max_samples=2000))
    assert err.value.status == 413


def test_images_land_in_their_rows_from_a_scratch_file(tmp_path: Path) -> None:
    def png(value: int) -> bytes:
        buf = io.BytesIO()
        Image.new("L", (4, 4), value).save(buf, "PNG")
        return buf.getvalue()

    path = tmp_path / "pets.zip"
    with zipfile.ZipFile(path, "w") as zf:  # archive order is not class order
        for name, value in [
            ("dogs/b.png", 200),
            ("cats/z.png", 10),
            ("dogs/a.png", 150),
            ("cats/a.png", 50),
        ]:
            zf.writestr(name, png(value))
    got = read(path)
    X = got.arrays.X  # type: ignore[attr-defined]
    assert X.shape == (4, 1, 4, 4) and X.dtype == torch.uint8  # a byte a pixel, as MNIST's
    assert [round(float(X[i].float().mean())) for i in range(4)] == [50, 10, 150, 200]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pets.zip"]


def test_an_npz_read_in_pieces_is_the_array_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tas.core.data.formats import npz

    rng = np.random.default_rng(1)
    images = rng.random((50, 3, 6, 6))
    cases = {
        "tab.npz": {"X": rng.normal(size=(300, 7)).astype(">f8"), "y": np.arange(300) % 3},
        "fortran.npz": {"X": np.asfortranarray(rng.normal(size=(40, 5))), "y": np.arange(40) % 2},
        "img.npz": {"X": images, "y": np.arange(50) % 2},
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
    for name, size in [("tab.npz", None), ("fortran.npz", None), ("img.npz", "4x4")]:
        opts = {"size": size} if size else {}
        monkeypatch.setattr(npz, "CHUNK_BYTES", 1)  # one sample a piece
        pieces = read(tmp_path / name, **opts)
        monkeypatch.setattr(npz, "CHUNK_BYTES", 1 << 30)
        whole = read(tmp_path / name, **opts)
        assert torch.equal(pieces.arrays.X, whole.arrays.X), name  # type: ignore[attr-defined]
        assert pieces.schema() == whole.schema()  # type: ignore[attr-defined]
    expected = torch.from_numpy(cases["tab.npz"]["X"].astype(np.float32))
    assert torch.equal(read(tmp_path / "tab.npz").arrays.X, expected)  # type: ignore[attr-defined]
    bad = rng.normal(size=(30, 4))
    bad[17, 2] = np.nan
    np.savez(tmp_path / "bad.npz", X=bad, y=np.arange(30) % 2)
    monkeypatch.setattr(npz, "CHUNK_BYTES", 64)
    with pytest.raises(UploadError, match="NaN or infinite value in sample 17"):
        read(tmp_path / "bad.npz")


def test_lines_longer_than_a_piece_and_no_final_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\r\n1.5,2,x\r\n3,4.25,y\r\n5,6,x\r\n7,8,y")
    monkeypatch.setattr(csvfile, "PIECE_CHARS", 4)
    got = read(path)
    assert got.arrays.X.tolist() == [[1.5, 2], [3, 4.25], [5, 6], [7, 8]]  # type: ignore[attr-defined]
    assert got.arrays.y.tolist() == [0, 1, 0, 1]  # type: ignore[attr-defined]
