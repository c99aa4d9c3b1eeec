"""/datasets over HTTP: every upload format, every refusal (the archive attacks built here),
dedupe by content, the listing, jobs on uploads, and uploads of other tenants."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tas.settings import Settings
from tas.store.engine import make_engine, make_sessionmaker
from tests.helpers.api import RecordingPublisher
from tests.helpers.uploads import leftovers, locs, msgs, small_upload_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Small upload limits, so the limit tests stay small."""
    return small_upload_settings(tmp_path)


# ---------------------------------------------------------------------------------------------
# Data built by the tests.

SPECIES = ["setosa", "versicolor", "virginica"]


def classes_csv(n_per_class: int = 20) -> bytes:
    rng = np.random.default_rng(0)
    lines = ["sepal_length,sepal_width,petal_length,species"]
    for k, name in enumerate(SPECIES):
        for _ in range(n_per_class):
            a, b, c = rng.normal(k, 0.3, 3)
            lines.append(f"{a:.3f},{b:.3f},{c:.3f},{name}")
    return ("\n".join(lines) + "\n").encode()


def regression_csv() -> bytes:
    rng = np.random.default_rng(1)
    lines = ["x1,x2,y"]
    for _ in range(40):
        x1, x2 = rng.normal(size=2)
        lines.append(f"{x1:.4f},{x2:.4f},{2 * x1 - x2 + 0.5:.4f}")
    return ("\n".join(lines) + "\n").encode()


def npz_bytes() -> bytes:
    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    np.savez(buf, X=rng.normal(size=(30, 5)).astype(np.float32), y=np.arange(30) % 2)
    return buf.getvalue()


def png(size: tuple[int, int] = (8, 8), mode: str = "L", value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(buf, "PNG")
    return buf.getvalue()


def jpeg(size: tuple[int, int] = (8, 8), value: int = 200) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (value, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


def zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def class_folders_zip() -> bytes:
    entries = {}
    for i in range(4):
        entries[f"cats/{i}.png"] = png(value=20 * i)  # grey PNG
        entries[f"dogs/{i}.jpg"] = jpeg(value=100 + 20 * i)  # colour JPEG
    return zip_of(entries)


def annotations_zip() -> bytes:
    entries = {f"images/img{i}.png": png(value=10 * i) for i in range(6)}
    rows = ["file_name,label"] + [f"img{i}.png,{'odd' if i % 2 else 'even'}" for i in range(6)]
    entries["annotations.csv"] = ("\n".join(rows) + "\n").encode()
    return zip_of(entries)


def bomb_zip() -> bytes:
    """One entry of 8 MiB of zeros: ~8 KiB compressed, a ratio of ~1000."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("cats/bomb.png", b"\0" * (8 << 20))
        z.writestr("dogs/ok.png", png())
    return buf.getvalue()


def symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("cats/a.png", png())
        link = zipfile.ZipInfo("dogs/link.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pixel_bomb_png(side: int = 30_000) -> bytes:
    """A PNG whose header says side×side pixels (a 30k×30k image) with almost no data behind it."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def upload(
    client: TestClient,
    file_name: str,
    data: bytes,
    ctype: str = "application/octet-stream",
    **fields: str,
) -> Any:
    return client.post("/datasets", files={"file": (file_name, data, ctype)}, data=fields)


# ---------------------------------------------------------------------------------------------
# Formats.


def test_csv_upload_infers_classes_counts_and_features(
    client: TestClient, settings: Settings
) -> None:
    r = upload(client, "iris.csv", classes_csv(), "text/csv", target="species")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert r.headers["location"] == f"/datasets/{ds['id']}"
    assert ds["name"] == "iris" and ds["builtin"] is False and ds["format"] == "csv"
    assert len(ds["sha256"]) == 64 and ds["size_bytes"] == len(classes_csv())
    schema = ds["schema"]
    assert schema["task"] == "classification" and schema["kind"] == "tabular"
    assert schema["samples"] == 60
    assert schema["input_shape"] == [3]
    assert schema["class_names"] == SPECIES
    counts = schema["class_counts"]
    assert (list(counts.values()) if isinstance(counts, dict) else counts) == [20, 20, 20]
    assert schema["feature_names"] == ["sepal_length", "sepal_width", "petal_length"]
    # the original is kept, content-addressed
    stored = settings.resolved_uploads_dir / "datasets" / ds["sha256"] / "iris.csv"
    assert stored.read_bytes() == classes_csv()
    assert leftovers(settings) == []
    assert client.get(f"/datasets/{ds['id']}").json() == ds


def test_regression_csv(client: TestClient) -> None:
    r = upload(client, "lin.csv", regression_csv(), "text/csv", target="y", name="linear-ish")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["name"] == "linear-ish"
    assert ds["schema"]["task"] == "regression"
    assert ds["schema"]["input_shape"] == [2]
    assert ds["schema"]["feature_names"] == ["x1", "x2"]


def test_regression_task_can_be_forced(client: TestClient) -> None:
    """Integer labels are classes unless `task` says otherwise."""
    csv = b"a,b\n" + b"".join(f"{i},{i % 3}\n".encode() for i in range(30))
    r = upload(client, "ints.csv", csv, target="b", task="regression")
    assert r.status_code == 201, r.text
    assert r.json()["schema"]["task"] == "regression"


def test_npz_upload(client: TestClient) -> None:
    r = upload(client, "arrays.npz", npz_bytes())
    assert r.status_code == 201, r.text
    schema = r.json()["schema"]
    assert r.json()["format"] == "npz"
    assert schema["samples"] == 30 and schema["input_shape"] == [5]
    assert schema["task"] == "classification" and schema["num_classes"] == 2


def test_zip_of_class_folders_grey_png_and_colour_jpeg(client: TestClient) -> None:
    r = upload(client, "pets.zip", class_folders_zip(), "application/zip")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["format"] == "image_folder"
    schema = ds["schema"]
    assert schema["kind"] == "image" and schema["samples"] == 8
    assert schema["class_names"] == ["cats", "dogs"]
    assert schema["input_shape"][1:] == [8, 8] and schema["input_shape"][0] in (1, 3)


def test_zip_resized_with_size_field(client: TestClient) -> None:
    r = upload(client, "pets.zip", class_folders_zip(), size="4x6")
    assert r.status_code == 201, r.text
    assert r.json()["schema"]["input_shape"][1:] == [4, 6]


def test_zip_with_annotations_csv(client: TestClient) -> None:
    r = upload(client, "seed000.zip", annotations_zip())
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["format"] == "image_annotations"
    assert ds["schema"]["samples"] == 6
    assert sorted(ds["schema"]["class_names"]) == ["even", "odd"]


def test_mixed_image_sizes_without_size_say_so(client: TestClient) -> None:
    data = zip_of(
        {"a/1.png": png((8, 8)), "a/2.png": png((8, 8)), "b/1.png": png((9, 7)), "b/2.png": png()}
    )
    r = upload(client, "mixed.zip", data)
    assert r.status_code == 422, r.text
    assert "size" in msgs(r)


# ---------------------------------------------------------------------------------------------
# Dedupe.


def test_same_bytes_twice_is_the_same_dataset(client: TestClient, settings: Settings) -> None:
    first = upload(client, "iris.csv", classes_csv(), target="species")
    again = upload(client, "iris-copy.csv", classes_csv(), target="species")
    assert first.status_code == 201 and again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    # other options on the same bytes: another dataset, the same stored bytes
    on_y = upload(client, "lin.csv", regression_csv(), target="y")
    on_x1 = upload(client, "lin.csv", regression_csv(), target="x1")
    assert on_y.status_code == on_x1.status_code == 201, on_x1.text
    assert on_y.json()["id"] != on_x1.json()["id"]
    assert on_y.json()["sha256"] == on_x1.json()["sha256"]
    assert on_x1.json()["schema"]["feature_names"] == ["x2", "y"]
    assert len(client.get("/datasets").json()["items"]) == len(builtin_names(client)) + 3
    assert leftovers(settings) == []


def builtin_names(client: TestClient) -> list[str]:
    return [d["id"] for d in client.get("/datasets").json()["items"] if d["builtin"]]


# ---------------------------------------------------------------------------------------------
# Refusals: each a 4xx naming the field, nothing left behind.


def test_over_the_upload_limit_is_413(client: TestClient, settings: Settings) -> None:
    big = b"a,b\n" + b"1,2\n" * ((1 << 20) // 4 + 10)
    r = upload(client, "big.csv", big, target="b")
    assert r.status_code == 413, r.text
    assert locs(r) == [["body", "file"]]
    assert "TAS_MAX_UPLOAD_MB" in msgs(r)
    assert leftovers(settings) == []


def test_the_limit_is_exact(client: TestClient, settings: Settings) -> None:
    """A file of exactly TAS_MAX_UPLOAD_MB is read; one byte more is a 413."""
    exact = b"a,b\n" + b"1,2\n3,4\n" * ((1 << 20) // 8 - 1) + b"5,6\n"
    assert len(exact) == 1 << 20
    r = upload(client, "exact.csv", exact, target="b", task="regression")
    assert r.status_code == 201, r.text
    r = upload(client, "over.csv", exact + b"1", target="b")
    assert r.status_code == 413, r.text
    assert leftovers(settings) == []


def test_over_the_limit_without_content_length_is_413(
    client: TestClient, settings: Settings
) -> None:
    """Chunked: the limit is counted on the streamed bytes, not trusted from a header."""
    boundary = "tasboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(40):  # 40 × 64 KiB = 2.5 MiB, over the 1 MiB limit
            yield b"1,2\n" * (1 << 14)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post(
        "/datasets",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413, r.text
    assert leftovers(settings) == []


def test_missing_target_column_names_it_and_lists_columns(client: TestClient) -> None:
    r = upload(client, "iris.csv", classes_csv(), target="label")
    assert r.status_code == 422, r.text
    assert ["body", "target"] in locs(r)
    text = msgs(r)
    assert "label" in text
    for column in ("sepal_length", "petal_length", "species"):
        assert column in text


def test_non_numeric_features_are_named(client: TestClient) -> None:
    csv = b"size,colour,label\n" + b"".join(
        f"{i},{'red' if i % 2 else 'blue'},{i % 2}\n".encode() for i in range(20)
    )
    r = upload(client, "c.csv", csv, target="label")
    assert r.status_code == 422, r.text
    assert "colour" in msgs(r)
    assert "size" not in msgs(r).replace("size,", "")  # only the bad column is blamed


@pytest.mark.parametrize(
    ("name", "data", "entry"),
    [
        ("slip.zip", zip_of({"cats/a.png": png(), "../evil.png": png()}), "../evil.png"),
        ("abs.zip", zip_of({"cats/a.png": png(), "/tmp/evil.png": png()}), "/tmp/evil.png"),
        ("link.zip", symlink_zip(), "dogs/link.png"),
        ("bomb.zip", bomb_zip(), "cats/bomb.png"),
        (
            "pixels.zip",
            zip_of(
                {
                    "cats/a.png": png(),
                    "cats/b.png": png(),
                    "dogs/a.png": png(),
                    "dogs/huge.png": pixel_bomb_png(),
                }
            ),
            "dogs/huge.png",
        ),
    ],
    ids=["zip-slip", "absolute-path", "symlink", "zip-bomb", "pixel-bomb"],
)
def test_archive_attacks_are_refused_naming_the_entry(
    client: TestClient, settings: Settings, tmp_path: Path, name: str, data: bytes, entry: str
) -> None:
    r = upload(client, name, data, "application/zip")
    assert 400 <= r.status_code < 500, r.text
    assert entry in msgs(r), r.text
    assert leftovers(settings) == []
    assert not (tmp_path / "evil.png").exists()
    assert not (settings.resolved_uploads_dir / "datasets").exists() or not any(
        (settings.resolved_uploads_dir / "datasets").iterdir()
    )


def test_too_many_entries_is_refused(client: TestClient) -> None:
    data = zip_of({f"c{i % 2}/{i}.png": png() for i in range(60)})  # limit: 50
    r = upload(client, "many.zip", data)
    assert 400 <= r.status_code < 500, r.text
    assert "50" in msgs(r)


def test_unsupported_type_is_415(client: TestClient) -> None:
    for name, data in [
        ("report.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"),
        ("arrays.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}"),
        ("photo.png", png()),
        ("data.gz", b"\x1f\x8b\x08\x00" + b"\0" * 20),
    ]:
        r = upload(client, name, data)
        assert r.status_code == 415, r.text
        assert locs(r) == [["body", "file"]]


def test_not_multipart_is_415(client: TestClient) -> None:
    r = client.post("/datasets", json={"file": "iris.csv"})
    assert r.status_code == 415, r.text
    assert locs(r) == [["header", "content-type"]]


@pytest.mark.parametrize("name", ["empty.csv", "empty.npz", "empty.zip"])
def test_empty_file_is_422(client: TestClient, name: str) -> None:
    r = upload(client, name, b"")
    assert r.status_code == 422, r.text
    assert ["body", "file"] in locs(r)


def test_unreadable_npz_and_pickled_npz_are_refused(client: TestClient, tmp_path: Path) -> None:
    r = upload(client, "x.npz", b"not a zip at all")
    assert 400 <= r.status_code < 500, r.text
    buf = io.BytesIO()
    np.savez(buf, X=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))
    r = upload(client, "pickled.npz", buf.getvalue())
    assert 400 <= r.status_code < 500, r.text


def test_missing_file_field_is_422(client: TestClient) -> None:
    r = client.post(
        "/datasets", data={"target": "species"}, files={"other": ("x", b"1", "text/plain")}
    )
    assert r.status_code == 422, r.text
    r = client.post(
        "/datasets",
        content=b'--b\r\nContent-Disposition: form-data; name="target"\r\n\r\ny\r\n--b--\r\n',
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 422, r.text
    assert ["body", "file"] in locs(r)
    assert "required" in msgs(r)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"size": "big"}, "size"),
        ({"size": "0x4"}, "size"),
        ({"size": "5000"}, "size"),
        ({"format": "parquet"}, "format"),
        ({"task": "clustering"}, "task"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_form_fields_are_422_naming_them(
    client: TestClient, fields: dict[str, str], loc: str
) -> None:
    r = upload(client, "iris.csv", classes_csv(), target="species", **fields)
    assert r.status_code == 422, r.text
    assert ["body", loc] in locs(r)


def test_malformed_multipart_is_4xx(client: TestClient, settings: Settings) -> None:
    for body, ctype in [
        (b"garbage", "multipart/form-data; boundary=b"),
        (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n1,2',
            "multipart/form-data; boundary=b",
        ),
        (b"x", "multipart/form-data"),
    ]:
        r = client.post("/datasets", content=body, headers={"content-type": ctype})
        assert 400 <= r.status_code < 500, (body, r.text)
    assert leftovers(settings) == []


# ---------------------------------------------------------------------------------------------
# Listing, one, delete.


def test_list_has_builtins_then_uploads_newest_first(client: TestClient) -> None:
    a = upload(client, "iris.csv", classes_csv(), target="species").json()
    b = upload(client, "lin.csv", regression_csv(), target="y").json()
    page = client.get("/datasets").json()
    builtins = [d for d in page["items"] if d["builtin"]]
    assert {"digits", "iris", "mnist"} <= {d["id"] for d in builtins}
    digits = next(d for d in builtins if d["id"] == "digits")
    assert digits["schema"]["input_shape"] == [1, 8, 8]
    assert digits["schema"]["num_classes"] == 10 and digits["schema"]["samples"] == 1797
    uploads = [d["id"] for d in page["items"] if not d["builtin"]]
    assert uploads == [b["id"], a["id"]]
    assert page["next_cursor"] is None
    # pagination over the uploads
    first = client.get("/datasets", params={"limit": 1}).json()
    assert [d["id"] for d in first["items"] if not d["builtin"]] == [b["id"]]
    second = client.get("/datasets", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [d["id"] for d in second["items"]] == [a["id"]]
    assert client.get("/datasets", params={"cursor": "!!"}).status_code == 422


def test_get_builtin_by_name_and_unknown_is_404(client: TestClient) -> None:
    r = client.get("/datasets/digits")
    assert r.status_code == 200 and r.json()["builtin"] is True
    r = client.get("/datasets/" + "0" * 32)
    assert r.status_code == 404
    assert "GET /datasets" in r.json()["detail"]
    assert client.get("/datasets/..%2F..%2Fetc").status_code == 404


def test_delete_dataset(client: TestClient, settings: Settings) -> None:
    ds = upload(client, "iris.csv", classes_csv(), target="species").json()
    stored = settings.resolved_uploads_dir / "datasets" / ds["sha256"] / "iris.csv"
    assert stored.exists()
    # in use by a queued job: 409
    job = client.post("/jobs", json=job_spec(ds["id"]))
    assert job.status_code == 201, job.text
    assert client.delete(f"/datasets/{ds['id']}").status_code == 409
    client.post(f"/jobs/{job.json()['id']}/cancel")
    assert client.delete(f"/datasets/{ds['id']}").status_code == 204
    assert client.get(f"/datasets/{ds['id']}").status_code == 404
    assert not stored.exists()
    assert client.delete(f"/datasets/{ds['id']}").status_code == 404
    assert client.delete("/datasets/digits").status_code == 409


# ---------------------------------------------------------------------------------------------
# Jobs on uploads.


def job_spec(dataset_id: str, **model: Any) -> dict[str, Any]:
    return {
        "name": "on-upload",
        "dataset": {"id": dataset_id, "test_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [8], **model},
        "training": {"epochs": 1, "batch_size": 8, "optimizer": "adam", "lr": 0.01},
    }


def test_job_on_an_upload(client: TestClient, published: RecordingPublisher) -> None:
    ds = upload(client, "iris.csv", classes_csv(), target="species").json()
    r = client.post("/jobs", json=job_spec(ds["id"]))
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["dataset"]["id"] == ds["id"]
    assert published.published == [(r.json()["id"], "default")]


@pytest.mark.parametrize(
    ("loss", "says"), [("mse", "allowed for classification"), ("bce", "at most 2 classes")]
)
def test_job_with_a_loss_that_does_not_fit_the_upload_is_422(
    client: TestClient, loss: str, says: str
) -> None:
    ds = upload(client, "iris.csv", classes_csv(), target="species").json()
    body = job_spec(ds["id"])
    body["training"]["loss"] = loss
    r = client.post("/jobs", json=body)
    assert r.status_code == 422, r.text
    assert locs(r) == [["body", "training", "loss"]]
    assert says in msgs(r)


def test_job_cnn_on_tabular_upload_is_422(client: TestClient) -> None:
    ds = upload(client, "iris.csv", classes_csv(), target="species").json()
    r = client.post("/jobs", json=job_spec(ds["id"], arch="cnn"))
    assert r.status_code == 422
    assert locs(r) == [["body", "model", "arch"]]


def test_job_on_unknown_upload_is_422(client: TestClient) -> None:
    r = client.post("/jobs", json=job_spec("f" * 32))
    assert r.status_code == 422
    assert locs(r) == [["body", "dataset", "id"]]
    assert "GET /datasets" in msgs(r)


def test_random_garbage_is_never_a_500(client: TestClient, settings: Settings) -> None:
    """Random bytes under every name a client might use, and archives of random entries."""
    rng = np.random.default_rng(7)
    names = ["a.csv", "a.npz", "a.zip", "a", "a.txt", "a.png", "a.safetensors"]
    for i in range(40):
        raw = rng.integers(0, 256, size=int(rng.integers(1, 4000)), dtype=np.uint8).tobytes()
        if i % 4 == 1:
            raw = zip_of({f"c{j}/{j}.png": raw[j:] for j in range(4)})
        elif i % 4 == 2:
            raw = b"a,b,label\n" + raw
        r = upload(client, names[i % len(names)], raw, target="label" if i % 3 else "")
        assert r.status_code < 500, (i, r.text)
        r = client.post("/weights", files={"file": ("w.safetensors", raw, "x/y")})
        assert r.status_code < 500, (i, r.text)
    assert leftovers(settings) == []


def test_another_tenants_uploads_are_invisible(client: TestClient, settings: Settings) -> None:
    """Rows of tenant 'other' (the caller is 'default'): 404, unlisted, unusable in a job."""
    from tas.store.orm import Dataset, WeightsFile

    engine = make_engine(settings.resolved_database_url)
    with make_sessionmaker(engine)() as s:
        ds = Dataset(
            tenant="other",
            name="theirs",
            format="csv",
            sha256="a" * 64,
            fingerprint="b" * 64,
            size_bytes=1,
            path="datasets/x/theirs.csv",
            schema={"format": "csv", "task": "regression", "kind": "tabular", "input_shape": [2]},
        )
        s.add(ds)
        s.add(WeightsFile(tenant="other", sha256="c" * 64, name="w", size_bytes=1, tensors={}))
        s.commit()
        ds_id = ds.id
    engine.dispose()
    assert client.get(f"/datasets/{ds_id}").status_code == 404
    assert client.delete(f"/datasets/{ds_id}").status_code == 404
    assert ds_id not in [d["id"] for d in client.get("/datasets").json()["items"]]
    assert client.get("/weights/" + "c" * 16).status_code == 404
    r = client.post("/jobs", json=job_spec(ds_id))
    assert r.status_code == 422 and locs(r) == [["body", "dataset", "id"]]
    body = job_spec(ds_id)
    body["dataset"] = {"name": "iris"}
    body["model"]["init_from"] = "weights:" + "c" * 16
    r = client.post("/jobs", json=body)
    assert r.status_code == 422 and locs(r) == [["body", "model", "init_from"]]
