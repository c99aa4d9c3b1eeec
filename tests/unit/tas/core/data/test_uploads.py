"""Upload readers: every format's happy path and every refusal, with each input (and each archive
attack) built here from scratch."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tas.core.data.dataset import as_float
from tas.core.data.formats.upload import (
    UploadError,
    UploadOptions,
    info_from_schema,
    load_upload,
    read_upload,
)
from tas.core.data.images import decode_image
from tas.core.errors import DataError
from tests.helpers.images import grey, image_bytes
from tests.helpers.uploads import make_zip, read, refused

# ---------------------------------------------------------------------------------------------
# Builders


def colour(h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def folder_zip(path: Path, per_class: int = 3, prefix: str = "") -> Path:
    entries = {
        f"{prefix}{cls}/{i}.png": image_bytes(grey(seed=10 * k + i))
        for k, cls in enumerate(["dogs", "cats"])
        for i in range(per_class)
    }
    return make_zip(path, entries)


# ---------------------------------------------------------------------------------------------
# CSV


def test_csv_text_labels_become_sorted_classes(tmp_path: Path) -> None:
    rows = ["a,b,label", "1,2.5,dog", "3,4,cat", "5,6,dog", "7,8,cat", "9,10,bird", "11,12,bird"]
    parsed = read(write(tmp_path / "d.csv", "\n".join(rows) + "\n"))
    assert (parsed.format, parsed.task, parsed.kind) == ("csv", "classification", "tabular")
    assert parsed.class_names == ["bird", "cat", "dog"]
    assert parsed.class_counts == {"bird": 2, "cat": 2, "dog": 2}
    assert parsed.feature_names == ["a", "b"]
    assert parsed.input_shape == (2,)
    X, y = parsed.arrays.X, parsed.arrays.y
    assert X.dtype == torch.float32 and y.dtype == torch.int64
    assert X[:2].tolist() == [[1.0, 2.5], [3.0, 4.0]]
    assert y.tolist() == [2, 1, 2, 1, 0, 0]
    assert parsed.options == UploadOptions("csv", target="label", task="classification")
    schema = parsed.schema()
    assert json.loads(json.dumps(schema)) == schema
    assert schema["num_classes"] == 3 and schema["samples"] == 6 and schema["target_dim"] == 1


def test_csv_numeric_target_inference_and_task_override(tmp_path: Path) -> None:
    n = 40
    x = np.arange(n)
    few = write(tmp_path / "few.csv", "x,target\n" + "".join(f"{v},{v % 3}\n" for v in x))
    parsed = read(few)
    assert parsed.task == "classification" and parsed.class_names == ["0", "1", "2"]
    # Many distinct integers: a quantity.
    many = write(tmp_path / "many.csv", "x,target\n" + "".join(f"{v},{v * 7}\n" for v in x))
    parsed = read(many)
    assert parsed.task == "regression" and parsed.class_names is None
    assert parsed.arrays.y.shape == (n, 1) and parsed.arrays.y.dtype == torch.float32
    assert parsed.arrays.y[3, 0].item() == 21.0
    floats = write(tmp_path / "f.csv", "x,target\n" + "".join(f"{v},{v / 2}\n" for v in x))
    assert read(floats).task == "regression"
    forced = read(few, UploadOptions(task="regression"))
    assert forced.task == "regression" and forced.arrays.y[:3, 0].tolist() == [0.0, 1.0, 2.0]
    # Numeric class labels keep their sorted values as names (not 0..K-1).
    odd = write(tmp_path / "odd.csv", "x,label\n" + "".join(f"{v},{[10, 2][v % 2]}\n" for v in x))
    parsed = read(odd, UploadOptions(task="classification"))
    assert parsed.class_names == ["2", "10"] and parsed.arrays.y[:2].tolist() == [1, 0]


def test_csv_bom_semicolons_quotes_and_blank_lines(tmp_path: Path) -> None:
    text = 'f1;f2;"Price"\n\n"1.5";2;3\n4;5;6.5\n\n'
    path = write(tmp_path / "p.csv", text, encoding="utf-8-sig")
    parsed = read(path, UploadOptions(target="price"))  # a unique case-insensitive match
    assert parsed.task == "regression" and parsed.feature_names == ["f1", "f2"]
    assert parsed.arrays.X.tolist() == [[1.5, 2.0], [4.0, 5.0]]
    assert parsed.arrays.y[:, 0].tolist() == [3.0, 6.5]
    assert parsed.options.target == "Price"
    crlf = tmp_path / "w.csv"
    crlf.write_bytes(b"\r\n\r\nlabel,a\r\nx,1\r\ny,2\r\nx,3\r\ny,4\r\n")
    assert read(crlf).arrays.X[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    tabs = write(tmp_path / "t.tsv", "a\tb\tlabel\n1\t2\tx\n3\t4\ty\n5\t6\tx\n7\t8\ty\n")
    assert read(tabs).arrays.X.shape == (4, 2)


def test_csv_columns_are_counted_before_the_header_is_parsed(tmp_path: Path) -> None:
    """A header of a million names is refused as too many columns (not as a field over the csv
    module's limit, with a traceback); a wide header under the limit reads, whatever delimiter the
    sniffer tries first."""
    huge = write(tmp_path / "huge.csv", ",".join(f"f{i}" for i in range(10**6)) + ",label\n")
    msg = refused(huge, max_columns=100_000)
    assert msg == "the CSV has 1,000,001 columns; at most 100,000 (TAS_UPLOAD_MAX_COLUMNS)"

    n = 30_000  # a 200 KB header line: one field over csv's 128 KiB limit under a wrong delimiter
    header = ";".join([*(f"feature_{i}" for i in range(n)), "label"])
    rows = "\n".join(";".join([*(str(r + i % 3) for i in range(n)), str(r % 2)]) for r in range(4))
    wide = write(tmp_path / "wide.csv", f"{header}\n{rows}\n")
    parsed = read(wide)
    assert parsed.arrays.X.shape == (4, n)
    assert refused(wide, max_columns=n)  # n features and the label: one over


def test_csv_target_column_refusals(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,c\n1,2,3\n4,5,6\n")
    msg = refused(path, UploadOptions(target="price"), field="target")
    assert msg == "column 'price' not found; columns: a, b, c"
    msg = refused(path, field="target")
    assert "'target' or 'label'" in msg and "columns: a, b, c" in msg
    only = write(tmp_path / "o.csv", "label\n1\n2\n")
    assert "only the target column 'label'" in refused(only)
    dup = write(tmp_path / "dup.csv", "label,a,label\n1,2,3\n")
    assert "appears 2 times" in refused(dup, field="target")


def test_csv_non_numeric_feature_columns_are_all_named(tmp_path: Path) -> None:
    rows = ["age,city,street,label", "1,3,x,a", "2,4,y,b", "3,Paris,Main St,a", "4,5,z,b"]
    msg = refused(write(tmp_path / "d.csv", "\n".join(rows)))
    assert msg == "non-numeric feature columns: city, street (first bad value 'x' in row 1)"
    rows = ["age,city,label", "1,3,a", "2,4,b", "3,Paris,a"]
    msg = refused(write(tmp_path / "e.csv", "\n".join(rows)))
    assert msg == "non-numeric feature columns: city (first bad value 'Paris' in row 3)"


def test_csv_empty_cells_wrong_lengths_and_nan_name_column_and_row(tmp_path: Path) -> None:
    rows = ["a,b,label", "1,2,x", "3,,y", "5,6,x"]
    msg = refused(write(tmp_path / "e.csv", "\n".join(rows)))
    assert "'b' (row 2)" in msg and "empty" in msg
    rows = ["a,b,label", "1,2,x", "3,y", "5,6,x"]
    assert "row 2 (line 3) has 2 values; the header has 3 columns" in refused(
        write(tmp_path / "w.csv", "\n".join(rows))
    )
    rows = ["a,b,label", "1,2,x", "  ", "5,6,x"]
    assert "row 2 (line 3) has 1 value;" in refused(write(tmp_path / "s.csv", "\n".join(rows)))
    rows = ["a,b,label", "1,2,x", "3,4,y", "5,nan,x", "1,1,y"]
    msg = refused(write(tmp_path / "n.csv", "\n".join(rows)))
    assert "column 'b'" in msg and "row 3" in msg
    rows = ["a,b,label", "1,2,x", "3,4,", "5,6,x"]
    assert "empty value in the target column 'label', row 2" in refused(
        write(tmp_path / "t.csv", "\n".join(rows))
    )


def test_csv_small_classes_and_task_refusals(tmp_path: Path) -> None:
    rows = ["a,label", "1,cat", "2,cat", "3,dog", "4,cat", "5,eel"]
    msg = refused(write(tmp_path / "s.csv", "\n".join(rows)), field="target")
    assert "'dog' (1)" in msg and "'eel' (1)" in msg and "at least 2" in msg
    one = write(tmp_path / "one.csv", "a,label\n1,cat\n2,cat\n")
    assert "one class ('cat')" in refused(one, field="target")
    text = write(tmp_path / "t.csv", "a,label\n1,cat\n2,dog\n3,cat\n4,dog\n")
    msg = refused(text, UploadOptions(task="regression"), field="task")
    assert "numeric target" in msg and "'label'" in msg


def test_empty_unreadable_and_unsupported_files(tmp_path: Path) -> None:
    assert refused(write(tmp_path / "e.csv", "")) == "the file is empty"
    assert "no data rows" in refused(write(tmp_path / "h.csv", "a,label\n\n"))
    bad = tmp_path / "latin.csv"
    bad.write_bytes("a,label\n1,caf\xe9\n2,x\n".encode("latin-1"))
    assert "not UTF-8" in refused(bad)
    bad.write_bytes("a,label\n1,x\n".encode("utf-16"))
    assert "UTF-16" in refused(bad, status=415)
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros(3))
    assert "np.savez" in refused(npy, status=415)
    png = tmp_path / "one.png"
    png.write_bytes(image_bytes(grey()))
    assert "a single PNG image" in refused(png, status=415)
    gz = tmp_path / "d.csv.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00" + bytes(20))
    assert "gzip" in refused(gz, status=415)
    js = write(tmp_path / "d.json", '{"a": 1}')
    assert "'.json'" in refused(js, status=415)
    xlsx = make_zip(tmp_path / "d.xlsx", {"[Content_Types].xml": b"<x/>", "xl/a.xml": b"<y/>"})
    assert "Excel" in refused(xlsx, status=415)
    csv_ = write(tmp_path / "d.csv", "a,label\n1,x\n")
    assert "not a ZIP" in refused(csv_, UploadOptions(format="npz"), field="format")
    assert "is a ZIP" in refused(
        folder_zip(tmp_path / "f.zip"), UploadOptions(format="csv"), field="format"
    )


def test_options_parse_and_validate() -> None:
    assert UploadOptions.from_dict({"size": "32x28"}).size == (32, 28)
    assert UploadOptions.from_dict(
        {"size": "28", "format": "auto", "target": " "}
    ) == UploadOptions(size=(28, 28))
    opts = UploadOptions("image_annotations", target="y", task="regression", size=(4, 5))
    assert UploadOptions.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts
    for bad, field in (
        ({"size": "0x3"}, "size"),
        ({"size": "a"}, "size"),
        ({"size": [1, 2, 3]}, "size"),
        ({"size": "28x5000"}, "size"),
        ({"format": "xls"}, "format"),
        ({"task": "ranking"}, "task"),
        ({"colour": 1}, "colour"),
    ):
        with pytest.raises(UploadError) as err:
            UploadOptions.from_dict(bad)
        assert err.value.field == field


def test_options_that_do_not_fit_the_format(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,label\n1,x\n2,x\n3,y\n4,y\n")
    assert "size applies to images" in refused(path, UploadOptions(size=(4, 4)), field="size")
    npz = tmp_path / "d.npz"
    np.savez(npz, X=np.zeros((4, 3)), y=np.array([0, 1, 0, 1]))
    assert "its array y" in refused(npz, UploadOptions(target="y"), field="target")
    assert "size applies to images" in refused(npz, UploadOptions(size=(2, 2)), field="size")
    folder = folder_zip(tmp_path / "f.zip")
    assert "class folder" in refused(folder, UploadOptions(target="label"), field="target")
    assert "regression" in refused(folder, UploadOptions(task="regression"), field="task")
    msg = refused(folder, UploadOptions(size=(100, 100)), field="size", status=413, max_pixels=99)
    assert msg == "size 100×100 is 10000 pixels; the limit is 99"


# ---------------------------------------------------------------------------------------------
# NPZ


def test_npz_tabular_and_label_kinds(tmp_path: Path) -> None:
    X = np.arange(24, dtype=np.float64).reshape(8, 3)
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=np.array([1, 3, 1, 3, 1, 3, 1, 3]), extra=np.zeros(2))
    parsed = read(path)
    assert (parsed.format, parsed.kind, parsed.task) == ("npz", "tabular", "classification")
    assert parsed.arrays.X.dtype == torch.float32 and torch.equal(
        parsed.arrays.X, torch.from_numpy(X).float()
    )
    assert parsed.class_names == ["1", "3"] and parsed.arrays.y.tolist() == [0, 1] * 4
    np.savez(path, X=X, y=np.array(["b", "a"] * 4))
    assert read(path).class_names == ["a", "b"]
    np.savez(path, X=X, y=np.linspace(0, 1, 8))
    parsed = read(path)
    assert parsed.task == "regression" and parsed.arrays.y.shape == (8, 1)
    np.savez(path, X=X, y=np.ones((8, 2)))
    parsed = read(path)
    assert parsed.task == "regression" and parsed.schema()["target_dim"] == 2
    np.savez_compressed(path, X=X, y=np.array([0.0, 1.0] * 4))
    assert read(path, UploadOptions(task="classification")).class_names == ["0", "1"]


def test_npz_images_grey_colour_and_resize(tmp_path: Path) -> None:
    path = tmp_path / "img.npz"
    X = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32)
    np.savez(path, X=X, y=np.array([0, 1, 2] * 2))
    parsed = read(path)
    assert parsed.kind == "image" and parsed.input_shape == (1, 8, 8)
    assert torch.equal(parsed.arrays.X[:, 0], torch.from_numpy(X))
    np.savez(path, X=np.zeros((4, 3, 5, 6), np.uint8), y=np.array([0, 1, 0, 1]))
    parsed = read(path, UploadOptions(size=(4, 3)))
    assert parsed.input_shape == (3, 4, 3) and parsed.arrays.X.shape == (4, 3, 4, 3)
    assert parsed.options.size == (4, 3)


def test_npz_refusals(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, features=np.zeros((4, 2)), y=np.zeros(4))
    msg = refused(path)
    assert "no array 'X'" in msg and "arrays present: features, y" in msg
    np.savez(path, X=np.zeros((4, 2)))
    assert "no array 'y'" in refused(path)
    np.savez(path, X=np.zeros((4, 2)), y=np.array(["a", 1, None, 2.0], dtype=object))
    assert "Python objects" in refused(path)
    np.savez(path, X=np.zeros((4, 2)), y=np.zeros(3))
    assert "X has 4 samples but y has 3" in refused(path)
    np.savez(path, X=np.zeros(4), y=np.zeros(4))
    assert "array 'X' has shape (4,)" in refused(path)
    np.savez(path, X=np.array([[1.0, np.nan]] * 4), y=np.zeros(4))
    assert "NaN" in refused(path)
    np.savez(path, X=np.zeros((4, 2)), y=np.array([0, 0, 0, 1]))
    assert "'1' (1)" in refused(path)
    np.savez(path, X=np.zeros((4, 2)), y=np.arange(4))
    assert "holds 4 samples; the limit is 3" in refused(path, status=413, max_samples=3)
    # A zip bomb dressed as an NPZ: refused from the central directory, before np.load.
    np.savez_compressed(path, X=np.zeros((2048, 1024)), y=np.zeros(2048))
    assert "expands" in refused(path, status=413)


def test_npz_header_that_lies_about_its_shape(tmp_path: Path) -> None:
    """A header promising 8 GB over 32 bytes of data is refused before numpy allocates for it."""
    y = io.BytesIO()
    np.lib.format.write_array(y, np.zeros(4))
    lying = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**9, 1)}
    np.lib.format.write_array_header_1_0(lying, header)
    lying.write(bytes(32))
    path = make_zip(tmp_path / "d.npz", {"X.npy": lying.getvalue(), "y.npy": y.getvalue()})
    assert "array 'X' is truncated" in refused(path)


# ---------------------------------------------------------------------------------------------
# ZIP of class folders


def test_image_folder_grey(tmp_path: Path) -> None:
    parsed = read(folder_zip(tmp_path / "f.zip"))
    assert (parsed.format, parsed.kind, parsed.task) == ("image_folder", "image", "classification")
    assert parsed.class_names == ["cats", "dogs"] and parsed.class_counts == {"cats": 3, "dogs": 3}
    X, y = parsed.arrays.X, parsed.arrays.y
    # Kept a byte a pixel, as the built-in image sets are; read as pixel / 255 per batch.
    assert X.shape == (6, 1, 6, 5) and X.dtype == torch.uint8 and parsed.input_shape == (1, 6, 5)
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    # Sorted by class then name: row 0 is cats/0.png (seed 10).
    assert torch.equal(X[0, 0], torch.from_numpy(grey(seed=10)))
    assert torch.allclose(as_float(X)[0, 0], torch.from_numpy(grey(seed=10)).float() / 255)
    assert float(as_float(X).min()) >= 0.0 and float(as_float(X).max()) <= 1.0
    assert parsed.info("pets") == info_from_schema("pets", parsed.schema())
    assert parsed.info("pets").default_normalize and not parsed.info("pets").has_test_split


def test_image_folder_any_colour_makes_all_rgb(tmp_path: Path) -> None:
    entries = {
        "a/1.png": image_bytes(grey(seed=1)),
        "a/2.png": image_bytes(grey(seed=2)),
        "b/1.jpg": image_bytes(colour(seed=3), "JPEG"),
        "b/2.JPEG": image_bytes(grey(seed=4), "JPEG"),
    }
    parsed = read(make_zip(tmp_path / "c.zip", entries))
    assert parsed.arrays.X.shape == (4, 3, 6, 5)
    g = torch.from_numpy(grey(seed=1)).float() / 255
    assert all(torch.allclose(as_float(parsed.arrays.X)[0, c], g) for c in range(3))


def test_image_folder_common_root_junk_and_readme(tmp_path: Path) -> None:
    entries = {
        "data/": b"",
        "data/README.md": b"# pets",
        "data/.DS_Store": b"\x00\x01",
        "__MACOSX/data/cats/._0.png": b"junk",
        "data/cats/.hidden.png": b"not an image",
        **{
            f"data/{c}/{i}.png": image_bytes(grey(seed=i))
            for c in ("cats", "dogs")
            for i in range(2)
        },
    }
    parsed = read(make_zip(tmp_path / "r.zip", entries))
    assert parsed.class_names == ["cats", "dogs"] and len(parsed.arrays) == 4


def test_image_folder_sizes_mixed_and_resized(tmp_path: Path) -> None:
    entries = {
        "cats/1.png": image_bytes(grey(28, 28)),
        "cats/2.png": image_bytes(grey(28, 28)),
        "dogs/1.png": image_bytes(grey(32, 30)),
        "dogs/2.png": image_bytes(grey(28, 28)),
    }
    path = make_zip(tmp_path / "m.zip", entries)
    msg = refused(path, field="size")
    assert "cats/1.png 28×28" in msg and "dogs/1.png 32×30" in msg and "give size" in msg
    parsed = read(path, UploadOptions(size=(16, 12)))
    assert parsed.arrays.X.shape == (4, 1, 16, 12) and parsed.options.size == (16, 12)
    flat = make_zip(
        tmp_path / "flat.zip", {k: image_bytes(np.full((8, 8), 200, np.uint8)) for k in entries}
    )
    X = as_float(read(flat, UploadOptions(size=(3, 5))).arrays.X)
    assert torch.allclose(X, torch.full_like(X, 200 / 255), atol=1e-5)


def test_image_folder_refusals(tmp_path: Path) -> None:
    ok = {f"{c}/{i}.png": image_bytes(grey()) for c in ("cats", "dogs") for i in range(2)}
    msg = refused(make_zip(tmp_path / "a.zip", {**ok, "cats/notes.txt": b"hi"}))
    assert "'cats/notes.txt'" in msg and "not a PNG or JPEG" in msg
    msg = refused(make_zip(tmp_path / "b.zip", {**ok, "stray.png": image_bytes(grey())}))
    assert "'stray.png' is not inside a class folder" in msg
    gif = io.BytesIO()
    Image.fromarray(grey()).save(gif, "GIF")
    msg = refused(make_zip(tmp_path / "c.zip", {**ok, "dogs/x.png": gif.getvalue()}))
    assert "'dogs/x.png' is not a PNG or JPEG image (a GIF file)" in msg
    cut = image_bytes(grey())[:-25]
    msg = refused(make_zip(tmp_path / "d.zip", {**ok, "dogs/cut.png": cut}))
    assert "'dogs/cut.png'" in msg
    msg = refused(
        make_zip(
            tmp_path / "e.zip", {"cats/1.png": ok["cats/0.png"], "cats/2.png": ok["cats/1.png"]}
        )
    )
    assert "one class ('cats')" in msg
    msg = refused(make_zip(tmp_path / "f.zip", {**ok, "eels/1.png": image_bytes(grey())}))
    assert "'eels' (1)" in msg
    assert "no PNG or JPEG images" in refused(make_zip(tmp_path / "g.zip", {"a/b.txt": b"x"}))


def test_pixel_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    big = image_bytes(np.zeros((200, 300), np.uint8))
    path = make_zip(
        tmp_path / "p.zip",
        {"cats/1.png": big, "cats/2.png": big, "dogs/1.png": big, "dogs/2.png": big},
    )
    msg = refused(path, status=413, max_pixels=50_000)
    assert msg == "image 'cats/1.png' is 200×300 = 60000 pixels; the limit is 50000"
    with pytest.raises(UploadError) as err:
        decode_image(big, "x.png", 1, max_pixels=10)
    assert err.value.status == 413
    msg = refused(path, status=413, max_array_bytes=100_000)
    assert "take" in msg and "the limit is" in msg


# ---------------------------------------------------------------------------------------------
# ZIP of images with an annotations CSV (one row per image: its file name and its label)


def annotations(
    tmp_path: Path, csv_text: str, folder: str = "images/", name: str = "a.zip"
) -> Path:
    entries = {f"{folder}img_{i}.png": image_bytes(grey(seed=i)) for i in range(6)}
    return make_zip(tmp_path / name, {"labels.csv": csv_text.encode(), **entries})


def test_annotations_with_header_and_images_folder(tmp_path: Path) -> None:
    rows = "file_name,label\n" + "".join(
        f"img_{i}.png,{['cat', 'dog'][i % 2]}\n" for i in (5, 0, 1, 2, 3, 4)
    )
    parsed = read(annotations(tmp_path, rows))
    assert (parsed.format, parsed.task) == ("image_annotations", "classification")
    assert parsed.class_names == ["cat", "dog"] and parsed.class_counts == {"cat": 3, "dog": 3}
    assert parsed.arrays.X.shape == (6, 1, 6, 5)
    assert parsed.arrays.y.tolist() == [1, 0, 1, 0, 1, 0]
    # CSV row order: row 0 is img_5.
    assert torch.allclose(
        as_float(parsed.arrays.X)[0, 0], torch.from_numpy(grey(seed=5)).float() / 255
    )
    assert parsed.options.target == "label"


def test_annotations_without_header_beside_the_csv_int_labels(tmp_path: Path) -> None:
    rows = "".join(f"img_{i}.png,{i % 3}\n" for i in range(6))
    parsed = read(annotations(tmp_path, rows, folder=""))
    assert parsed.class_names == ["0", "1", "2"] and parsed.arrays.y.tolist() == [0, 1, 2, 0, 1, 2]
    assert parsed.options.target == "1"


def test_annotations_in_a_folder_with_windows_paths_and_crlf(tmp_path: Path) -> None:
    rows = "file_name,label\r\n" + "".join(f"sub\\{i}.png,{i % 2}\r\n" for i in range(4))
    entries = {f"dataset/img/sub/{i}.png": image_bytes(grey(seed=i)) for i in range(4)}
    path = make_zip(tmp_path / "a.zip", {"dataset/labels.csv": rows.encode(), **entries})
    parsed = read(path)
    assert parsed.format == "image_annotations" and parsed.arrays.y.tolist() == [0, 1, 0, 1]
    assert torch.allclose(
        as_float(parsed.arrays.X)[3, 0], torch.from_numpy(grey(seed=3)).float() / 255
    )


def test_annotations_target_regression_and_refusals(tmp_path: Path) -> None:
    rows = "path,id,age\n" + "".join(f"img_{i}.png,{i},{20 + i / 3}\n" for i in range(6))
    parsed = read(annotations(tmp_path, rows), UploadOptions(target="age"))
    assert parsed.task == "regression" and parsed.arrays.y.shape == (6, 1)
    assert "column 'size' not found" in refused(
        annotations(tmp_path, rows, name="b.zip"), UploadOptions(target="size"), field="target"
    )
    missing = "file_name,label\nimg_0.png,a\nimg_1.png,b\nimg_9.png,a\n"
    msg = refused(annotations(tmp_path, missing, name="c.zip"))
    assert "row 3 of 'labels.csv' names 'img_9.png', which is not in the archive" in msg
    two = make_zip(
        tmp_path / "d.zip", {"a.csv": b"x,y\n", "b.csv": b"x,y\n", "i/1.png": image_bytes(grey())}
    )
    assert "2 CSV files" in refused(two)
    short = "file_name,label\nimg_0.png,a\nimg_1.png\n"
    assert "row 2" in refused(annotations(tmp_path, short, name="e.zip"))


# ---------------------------------------------------------------------------------------------
# Archive attacks: refused from the central directory, nothing extracted


def _zip_with_info(path: Path, info: zipfile.ZipInfo, data: bytes = b"x") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cats/1.png", image_bytes(grey()))
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("../evil.png", "escapes the archive"),
        ("cats/../../evil.png", "escapes the archive"),
        ("/etc/evil.png", "absolute path"),
        ("\\evil.png", "absolute path"),
        ("C:/evil.png", "absolute path"),
    ],
)
def test_paths_that_escape_are_refused(tmp_path: Path, name: str, says: str) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    path = _zip_with_info(tmp_path / "z.zip", zipfile.ZipInfo(name))
    msg = refused(path)
    assert says in msg and repr(name.replace("\\", "/")) in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == [*before, "z.zip"]


def test_symlink_and_encrypted_entries_are_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("cats/2.png")
    link.create_system = 3
    link.external_attr = 0o120777 << 16
    msg = refused(_zip_with_info(tmp_path / "l.zip", link, b"/etc/passwd"))
    assert msg == "entry 'cats/2.png' is a symbolic link; links are refused"
    # zipfile cannot write an encrypted entry: set the flag in the central directory by hand.
    path = _zip_with_info(tmp_path / "e.zip", zipfile.ZipInfo("cats/3.png"))
    data = bytearray(path.read_bytes())
    record = data.rfind(b"PK\x01\x02")  # the last entry's central directory record
    data[record + 8] |= 0x1
    path.write_bytes(bytes(data))
    assert refused(path) == "entry 'cats/3.png' is encrypted; upload an archive without a password"


def test_zip_bombs_and_entry_limits(tmp_path: Path) -> None:
    zeros = bytes(4 << 20)
    ok = {f"{c}/{i}.png": image_bytes(grey()) for c in ("cats", "dogs") for i in range(2)}
    bomb = make_zip(tmp_path / "b.zip", {**ok, "cats/zeros.png": zeros})
    msg = refused(bomb, status=413)
    assert "entry 'cats/zeros.png' expands" in msg and "the limit is 200×" in msg
    # Each entry under the per-entry floor, the archive as a whole a bomb.
    many = make_zip(
        tmp_path / "m.zip", {**ok, **{f"pad/{i}.bin": bytes(600_000) for i in range(3)}}
    )
    assert "the archive expands" in refused(many, status=413)
    # Stored (uncompressed), so no ratio: the total size limit.
    stored = make_zip(tmp_path / "s.zip", {**ok, "pad.bin": bytes(3000)}, zipfile.ZIP_STORED)
    msg = refused(stored, status=413, max_uncompressed_bytes=2000)
    assert "unpacks to more than" in msg and "'pad.bin'" in msg
    msg = refused(folder_zip(tmp_path / "f.zip"), status=413, max_entries=3)
    assert msg == "the archive has 6 entries; the limit is 3"


def test_not_a_zip_and_corrupt_entries(tmp_path: Path) -> None:
    broken = tmp_path / "x.zip"
    broken.write_bytes(b"PK\x03\x04" + bytes(50))
    assert "not a readable" in refused(broken)
    entries = {f"{c}/{i}.png": image_bytes(grey()) for c in ("cats", "dogs") for i in range(2)}
    path = make_zip(tmp_path / "f.zip", entries, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    i = data.find(b"IDAT")  # the first entry's pixel data: its CRC no longer matches
    data[i + 8 : i + 20] = bytes(12)
    path.write_bytes(bytes(data))
    msg = refused(path)
    assert "'cats/0.png'" in msg and "CRC" in msg


# ---------------------------------------------------------------------------------------------
# Job time: load_upload re-reads and checks against the stored schema


@pytest.fixture
def uploads(tmp_path: Path) -> list[tuple[Path, UploadOptions]]:
    csv_path = write(
        tmp_path / "d.csv", "a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(10))
    )
    npz = tmp_path / "d.npz"
    np.savez(npz, X=np.random.default_rng(0).random((6, 2, 4, 4)), y=np.array(["x", "y"] * 3))
    rows = "file_name,label\n" + "".join(f"img_{i}.png,{i % 2}\n" for i in range(6))
    return [
        (csv_path, UploadOptions()),
        (npz, UploadOptions(size=(3, 3))),
        (folder_zip(tmp_path / "f.zip", prefix="root/"), UploadOptions(size=(4, 4))),
        (annotations(tmp_path, rows), UploadOptions()),
    ]


def test_load_upload_round_trip(uploads: list[tuple[Path, UploadOptions]]) -> None:
    for path, options in uploads:
        parsed = read_upload(path, path.name, options)
        schema = json.loads(json.dumps(parsed.schema()))  # as stored
        loaded = load_upload(path, path.name, schema)
        assert torch.equal(loaded.train.X, parsed.arrays.X) and torch.equal(
            loaded.train.y, parsed.arrays.y
        )
        assert loaded.test is None and loaded.notes["format"] == parsed.format
        assert info_from_schema("ds", schema) == parsed.info("ds")


def test_load_upload_refuses_a_file_that_changed(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,label\n1,x\n2,y\n3,x\n4,y\n")
    schema = read(path).schema()
    write(path, "a,label\n1,x\n2,y\n3,x\n4,y\n5,x\n")
    with pytest.raises(DataError) as err:
        load_upload(path, "d.csv", schema)
    assert "samples was 4" in err.value.message and "5" in err.value.message
