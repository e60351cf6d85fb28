"""Artifact store: layout, atomic writes that leave nothing half-written, and path-like name rejection."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from core import storage
from core.storage import (
    ArtifactStore,
    InvalidNameError,
    atomic_dir,
    atomic_open,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_id,
    publish_dir,
    safe_name,
    size_of,
)

ID = uuid.uuid4().hex


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "..", ".", "a/b", "a\\b", "", "   ", ".hidden", "x\x00y", "x" * 256, "a..b/c"]
)
def test_path_like_or_unusable_names_are_rejected_with_the_field(bad: str) -> None:
    with pytest.raises(InvalidNameError, match="filename"):
        safe_name(bad, "filename")


@pytest.mark.parametrize("good", ["ml-100k.inter", "my data.csv", "ratings_v2.parquet", "a..b"])
def test_plain_names_pass(good: str) -> None:
    assert safe_name(good) == good


@pytest.mark.parametrize("bad", ["../x", "ABCDEF" * 6, "0" * 31, ID + "/.."])
def test_ids_must_be_32_hex(bad: str) -> None:
    with pytest.raises(InvalidNameError, match="job_id"):
        check_id(bad, "job_id")


def test_layout(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.dataset_file(ID, "d.csv") == tmp_path.resolve() / "datasets" / ID / "d.csv"
    assert store.model_dir(ID) == tmp_path.resolve() / "models" / ID
    assert store.serving_dir(ID) == tmp_path.resolve() / "models" / ID / "serving"
    assert store.checkpoint_dir(ID, "distill") == tmp_path.resolve() / "jobs" / ID / "checkpoints" / "distill"
    assert store.relative(store.model_dir(ID)) == f"models/{ID}"
    assert store.resolve(f"models/{ID}") == store.model_dir(ID)
    with pytest.raises(InvalidNameError, match="phase"):
        store.checkpoint_dir(ID, "../x")


def test_stored_paths_cannot_leave_the_root(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "root")
    with pytest.raises(InvalidNameError, match="leaves the artifact store"):
        store.resolve("../../etc/passwd")
    with pytest.raises(InvalidNameError, match="relative"):
        store.resolve("/etc/passwd")
    with pytest.raises(InvalidNameError, match="filename"):
        store.dataset_file(ID, "../../etc/passwd")
    with pytest.raises(InvalidNameError):
        store.remove(store.root)


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "m.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


def test_failed_write_leaves_old_content_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target, "w") as fh:
        fh.write("half of the new")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new.bin"
    with pytest.raises(ValueError), atomic_open(target) as fh:
        fh.write(b"abc")
        raise ValueError("too large")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_only_after_the_block_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "data.inter"
    atomic_write_text(target, "old")
    with pytest.raises(ValueError, match="bad counts"), atomic_path(target) as staged:
        staged.write_text("new but unchecked")
        assert staged.parent == tmp_path and staged.name.startswith(".data.inter.") and target.read_text() == "old"
        raise ValueError("bad counts")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["data.inter"]
    with atomic_path(target) as staged:
        staged.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["data.inter"]


def test_store_files_are_private_and_user_files_follow_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    atomic_write_text(tmp_path / "artifact.json", "{}")
    assert (tmp_path / "artifact.json").stat().st_mode & 0o777 == 0o600  # the store holds users' data
    mask = os.umask(0o022)
    os.umask(mask)
    assert storage.USER_FILE_MODE == 0o666 & ~mask  # read at import: what open() gives a file
    monkeypatch.setattr(storage, "USER_FILE_MODE", 0o640)
    atomic_write_text(tmp_path / "result.json", "{}", user_file=True)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o640


def test_atomic_dir_swaps_the_folder_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "serving"
    with atomic_dir(final) as staging:
        (staging / "meta.json").write_text("v1")
    with pytest.raises(OSError), atomic_dir(final) as staging:
        (staging / "meta.json").write_text("v2")
        raise OSError("disk full")
    assert (final / "meta.json").read_text() == "v1" and [p.name for p in tmp_path.iterdir()] == ["serving"]
    with atomic_dir(final) as staging:
        (staging / "meta.json").write_text("v2")
    assert (final / "meta.json").read_text() == "v2" and [p.name for p in tmp_path.iterdir()] == ["serving"]


def test_publish_dir_swaps_folders_whole(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    final = store.serving_dir(ID)
    for version in ("v1", "v2"):
        staging = store.staging_dir(final)
        (staging / "index.bin").write_text(version)
        (staging / "ids.json").write_text("[]")
        publish_dir(staging, final)
    assert (final / "index.bin").read_text() == "v2"
    assert sorted(p.name for p in final.parent.iterdir()) == ["serving"]
    assert size_of(final) == 4 and size_of(final / "index.bin") == 2
    store.remove(store.model_dir(ID))
    assert not store.model_dir(ID).exists()
