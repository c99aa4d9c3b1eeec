"""Bundles: objects first, manifest last; readers trust only manifests and verify what they read."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from tas.core.objstore import (
    MANIFEST,
    BundleCorrupt,
    BundleNotFound,
    BundleWriter,
    ObjectStore,
    delete_bundle,
    latest_bundle,
    list_bundles,
    open_bundle,
    sweep_torn,
    write_bundle,
)
from tas.core.objstore.base import CHUNK


def commit(store: ObjectStore, prefix: str, files: dict[str, bytes], **meta: object) -> None:
    with write_bundle(store, prefix) as w:
        for name, data in files.items():
            w.put_bytes(name, data)
        w.commit(dict(meta))


def torn(store: ObjectStore, prefix: str, files: dict[str, bytes]) -> None:
    """A writer killed after its objects and before its manifest: nothing cleans up after it."""
    w = write_bundle(store, prefix)
    for name, data in files.items():
        w.put_bytes(name, data)


def test_a_committed_bundle_reads_back_verified(store: ObjectStore, tmp_path: Path) -> None:
    big = os.urandom(CHUNK + 7)
    src = tmp_path / "weights.bin"
    src.write_bytes(big)
    with write_bundle(store, "jobs/j1/ckpt-e000001") as w:
        w.put_file("model.safetensors", src)
        w.put_bytes("state.pt", b"state")
        with w.writer("sub/notes.txt") as f:
            f.write(b"notes")
        bundle = w.commit({"epoch": 1, "metric": 0.5})
    again = open_bundle(store, "jobs/j1/ckpt-e000001")
    assert again.manifest == bundle.manifest
    assert again.meta == {"epoch": 1, "metric": 0.5}
    assert again.names() == ["model.safetensors", "state.pt", "sub/notes.txt"]
    entry = again.manifest.objects["model.safetensors"]
    assert (entry.size, entry.sha256) == (len(big), hashlib.sha256(big).hexdigest())
    assert again.read_bytes("state.pt") == b"state"
    assert again.read_bytes("sub/notes.txt") == b"notes"
    assert again.fetch("model.safetensors", tmp_path / "out.bin").read_bytes() == big
    again.check(deep=True)
    # The manifest is readable JSON a person can inspect.
    raw = json.loads(store.get_bytes(f"jobs/j1/ckpt-e000001/{MANIFEST}"))
    assert raw["objects"]["state.pt"]["size"] == 5 and raw["meta"]["epoch"] == 1


def test_without_a_manifest_there_is_no_bundle(store: ObjectStore) -> None:
    torn(store, "ck/ckpt-2", {"model": b"new"})
    with pytest.raises(BundleNotFound):
        open_bundle(store, "ck/ckpt-2")
    with pytest.raises(BundleNotFound):
        open_bundle(store, "ck/never-written")


def test_a_torn_write_is_skipped_for_the_previous_bundle(store: ObjectStore) -> None:
    commit(store, "ck/ckpt-e000001", {"model": b"one"}, epoch=1)
    commit(store, "ck/ckpt-e000002", {"model": b"two"}, epoch=2)
    torn(store, "ck/ckpt-e000003", {"model": b"three"})
    assert [b.name for b in list_bundles(store, "ck")] == ["ckpt-e000002", "ckpt-e000001"]
    assert [b.name for b in list_bundles(store, "ck", newest_first=False)] == [
        "ckpt-e000001",
        "ckpt-e000002",
    ]
    latest = latest_bundle(store, "ck")
    assert latest is not None and latest.read_bytes("model") == b"two"
    assert latest_bundle(store, "nothing") is None


def test_a_corrupted_object_fails_verification(store: ObjectStore, tmp_path: Path) -> None:
    commit(store, "ck/ckpt-1", {"model": b"good weights", "state": b"s"})
    commit(store, "ck/ckpt-2", {"model": b"fine weights", "state": b"s"})
    bundle = open_bundle(store, "ck/ckpt-2")
    store.put_bytes(bundle.key("model"), b"evil weights")  # same size, other bytes
    with pytest.raises(BundleCorrupt, match="sha256"):
        bundle.read_bytes("model")
    with pytest.raises(BundleCorrupt, match="sha256"):
        bundle.fetch("model", tmp_path / "m.bin")
    assert not (tmp_path / "m.bin").exists()  # no unverified file left for anyone to use
    bundle.check()  # the sizes match: only reading the bytes can tell
    with pytest.raises(BundleCorrupt):
        bundle.check(deep=True)
    deep = latest_bundle(store, "ck", deep=True)
    assert deep is not None and deep.name == "ckpt-1"
    # Another size is caught by the cheap check, and by a read before the end of the object.
    store.put_bytes(bundle.key("model"), b"much longer evil weights")
    with pytest.raises(BundleCorrupt, match="bytes"):
        bundle.check()
    with pytest.raises(BundleCorrupt, match="more than"), bundle.open("model") as r:
        r.read(100)
    shallow = latest_bundle(store, "ck")
    assert shallow is not None and shallow.name == "ckpt-1"


def test_a_missing_object_fails_verification(store: ObjectStore) -> None:
    commit(store, "ck/ckpt-1", {"model": b"1"})
    commit(store, "ck/ckpt-2", {"model": b"2", "state": b"s"})
    bundle = open_bundle(store, "ck/ckpt-2")
    store.delete(bundle.key("state"))
    with pytest.raises(BundleCorrupt, match="missing"):
        bundle.read_bytes("state")
    with pytest.raises(BundleCorrupt, match="missing"):
        bundle.check()
    latest = latest_bundle(store, "ck")
    assert latest is not None and latest.name == "ckpt-1"


def test_an_unreadable_manifest_is_a_clear_error_and_skipped(store: ObjectStore) -> None:
    commit(store, "ck/ckpt-1", {"model": b"1"})
    commit(store, "ck/ckpt-2", {"model": b"2"})
    store.put_bytes(f"ck/ckpt-2/{MANIFEST}", b'{"format": 1, "objects": {"../x": ')
    with pytest.raises(BundleCorrupt, match=r"manifest .*ckpt-2.* unreadable"):
        open_bundle(store, "ck/ckpt-2")
    assert [b.name for b in list_bundles(store, "ck")] == ["ckpt-1"]
    # A manifest naming an object outside its bundle is refused as unreadable too.
    store.put_bytes(
        f"ck/ckpt-2/{MANIFEST}",
        json.dumps(
            {
                "format": 1,
                "generation": "g1",
                "objects": {"../../ckpt-1/model": {"size": 1, "sha256": "0"}},
                "meta": {},
                "created_at": 0,
            }
        ).encode(),
    )
    with pytest.raises(BundleCorrupt, match="invalid object key"):
        open_bundle(store, "ck/ckpt-2")


def test_rewriting_a_bundle_keeps_the_old_copy_until_the_new_manifest(store: ObjectStore) -> None:
    commit(store, "models/m/v1", {"model": b"old"}, version="old")
    old = open_bundle(store, "models/m/v1")
    with write_bundle(store, "models/m/v1") as w:
        w.put_bytes("model", b"new!")
        # Objects written, manifest not yet: readers still get the whole old copy.
        assert open_bundle(store, "models/m/v1").read_bytes("model") == b"old"
        w.commit({"version": "new"})
    new = open_bundle(store, "models/m/v1")
    assert (new.meta, new.read_bytes("model")) == ({"version": "new"}, b"new!")
    # The old generation is gone: one holding the old manifest finds its objects missing.
    with pytest.raises(BundleCorrupt, match="missing"):
        old.read_bytes("model")
    assert [o.key for o in store.list_objects("models/m/v1")] == [
        f"models/m/v1/{MANIFEST}",
        new.key("model"),
    ]


def test_a_failed_write_deletes_its_objects_and_keeps_the_previous(store: ObjectStore) -> None:
    commit(store, "ck/b", {"model": b"kept"})
    with pytest.raises(RuntimeError), write_bundle(store, "ck/b") as w:  # noqa: PT012
        w.put_bytes("model", b"lost")
        raise RuntimeError("upload failed")
    assert open_bundle(store, "ck/b").read_bytes("model") == b"kept"
    assert len(store.list_objects("ck/b")) == 2  # the kept object and its manifest


def test_writer_refuses_duplicate_and_reserved_names(store: ObjectStore) -> None:
    with write_bundle(store, "ck/x") as w:
        w.put_bytes("a", b"1")
        with pytest.raises(ValueError, match="already"):
            w.put_bytes("a", b"2")
        with pytest.raises(ValueError, match="bundle's own"):
            w.put_bytes(MANIFEST, b"{}")
        w.commit()
        with pytest.raises(RuntimeError, match="already committed"):
            w.commit()


def test_delete_bundle_removes_manifest_and_objects(store: ObjectStore) -> None:
    commit(store, "ds/d1", {"a": b"1", "b/c": b"2"})
    commit(store, "ds/d2", {"a": b"1"})
    assert delete_bundle(store, "ds/d1") == 3
    with pytest.raises(BundleNotFound):
        open_bundle(store, "ds/d1")
    assert store.list_objects("ds/d1") == []
    assert [b.name for b in list_bundles(store, "ds")] == ["d2"]
    torn(store, "ds/d3", {"a": b"1"})
    assert delete_bundle(store, "ds/d3") == 1  # a torn write is deleted too
    assert store.list_objects("ds/d3") == []


def test_sweep_deletes_only_old_abandoned_writes(store: ObjectStore) -> None:
    old = f"g{time.time_ns() - 7200 * 10**9:x}-deadbeef"  # started two hours ago
    commit(store, "ck/b1", {"model": b"kept"})
    abandoned = BundleWriter(store, "ck/b1", generation=old)  # a re-write killed mid-upload
    abandoned.put_bytes("model", b"x")
    torn_old = BundleWriter(store, "ck/b2", generation=old)  # a first write killed
    torn_old.put_bytes("model", b"y")
    torn(store, "ck/b3", {"model": b"z"})  # a write that may still be running
    assert sweep_torn(store, "ck", older_than_s=3600) == 2
    assert open_bundle(store, "ck/b1").read_bytes("model") == b"kept"
    assert [o.key for o in store.list_objects("ck/b1")] == [
        f"ck/b1/{MANIFEST}",
        open_bundle(store, "ck/b1").key("model"),
    ]
    assert store.list_objects("ck/b2") == []
    assert len(store.list_objects("ck/b3")) == 1
