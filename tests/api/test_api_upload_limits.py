"""Issue 10 upload defects: child-process parsing, decompressed limit, untrainable data, truncated bodies,
names, separators and the start-up sweep of crash leftovers."""

from __future__ import annotations

import gzip
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from api_support import API_KEY, RecordingQueue, add_dataset, build_app, make_settings
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from test_api_datasets import CSV, assert_nothing_written, multipart_chunks, upload

from api.ingest import IngestRunner, cleanup_upload_leftovers
from core.db.models import Base
from core.db.session import get_engine, session_factory
from core.ingest import OWNER_FILE, sweep_upload_leftovers
from core.settings import Settings


def client_for(tmp_path: Path, **overrides: Any) -> tuple[TestClient, Settings]:
    settings = make_settings(tmp_path / "home2", **overrides)
    settings.ensure_dirs()
    Base.metadata.create_all(get_engine(settings.database_url))
    return TestClient(build_app(settings, RecordingQueue()), headers={"X-API-Key": API_KEY}), settings


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9)


# --- parsing happens in a child process -------------------------------------------------------------


def test_the_api_process_never_parses_the_file(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.data
    import core.data_read

    def boom(*_: object, **__: object) -> None:
        raise AssertionError("parsed inside the API process")

    monkeypatch.setattr(core.data, "load_interactions", boom)
    monkeypatch.setattr(core.data_read, "read_columns", boom)
    res = upload(client, CSV)
    assert res.status_code == 201, res.text
    assert (res.json()["n_users"], res.json()["n_items"]) == (3, 3)


def test_parse_time_limit_is_a_413_naming_it(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    client, settings = client_for(tmp_path, ingest_timeout_s=0.01)
    with client:
        res = upload(client, CSV)
    assert res.status_code == 413 and res.json()["code"] == "ingest_timeout"
    assert "RECDISTILL_INGEST_TIMEOUT" in res.json()["detail"]
    assert_nothing_written(session_factory(settings.database_url), settings)


def test_memory_limit_of_the_child_is_a_413(tmp_path: Path) -> None:
    # 40 MiB is less than the child needs just to import pandas: it is killed and the upload refused.
    client, settings = client_for(tmp_path, ingest_memory_mb=40)
    with client:
        res = upload(client, CSV)
    assert res.status_code == 413, res.text
    assert res.json()["code"] == "ingest_memory" and "RECDISTILL_INGEST_MEMORY_MB" in res.json()["detail"]
    assert_nothing_written(session_factory(settings.database_url), settings)


def test_busy_parse_slots_answer_503_with_retry_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, settings = client_for(tmp_path, ingest_concurrency=1, ingest_wait_s=0.2)
    started, release = threading.Event(), threading.Event()
    real = IngestRunner._run_child

    def slow(self: IngestRunner, req: Any) -> dict[str, Any]:
        started.set()
        release.wait(10)
        return real(self, req)

    monkeypatch.setattr(IngestRunner, "_run_child", slow)
    with client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(upload, client, CSV)
        assert started.wait(10)
        res = upload(client, CSV)
        release.set()
        assert first.result().status_code == 201
    assert res.status_code == 503 and res.json()["code"] == "ingest_busy"
    assert res.headers["retry-after"] == "1" and "RECDISTILL_INGEST_CONCURRENCY" in res.json()["detail"]
    folders = list((settings.artifact_dir / "datasets").iterdir())
    assert len(folders) == 1  # only the accepted upload's


# --- decompressed size -----------------------------------------------------------------------------


def test_gzip_bomb_past_the_decompressed_limit_is_a_413(tmp_path: Path) -> None:
    client, settings = client_for(tmp_path, max_upload_decompressed_mb=1)
    bomb = b"user_id,item_id\n" + b"u1,i1\n" * 200_000  # 1.2 MB unpacked, ~3 KB packed
    with client:
        small = upload(client, gz(b"user_id,item_id\nu1,i1\nu1,i2\nu2,i1\n"), "ok.csv.gz")
        assert small.status_code == 201, small.text
        for name, packed in (("bomb.csv.gz", gz(bomb)), ("bomb.csv.bz2", __import__("bz2").compress(bomb)),
                             ("bomb.csv.xz", __import__("lzma").compress(bomb))):
            assert len(packed) < 64 * 1024
            res = upload(client, packed, name)
            assert res.status_code == 413, res.text
            body = res.json()
            assert body["code"] == "decompressed_too_large"
            assert "1 MiB" in body["detail"] and "RECDISTILL_MAX_UPLOAD_DECOMPRESSED_MB" in body["detail"]
            assert name in body["detail"]
        folders = list((settings.artifact_dir / "datasets").iterdir())
        assert [f.name for f in folders] == [small.json()["id"]]  # nothing of the bombs left


def test_corrupt_gzip_is_a_422(client: TestClient, sessions: sessionmaker[Session], settings: Settings) -> None:
    res = upload(client, gz(CSV)[:-12], "r.csv.gz")
    assert res.status_code == 422 and "r.csv.gz" in res.json()["detail"]
    assert_nothing_written(sessions, settings)


# --- what no job could train on ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"user_id,item_id\nu1,i1\n", "2 users"),  # 1 x 1
        (b"user_id,item_id\nu1,i1\nu1,i2\nu1,i3\n", "2 users"),  # one user
        (b"user_id,item_id\nu1,i1\nu2,i1\nu3,i1\n", "2 items"),  # one item
        (b"user_id,item_id\nu1,i1\nu2,i2\nu1,i1\n", "held out"),  # nobody has two distinct items
    ],
)
def test_untrainable_data_is_refused(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings, content: bytes, words: str
) -> None:
    res = upload(client, content)
    assert res.status_code == 422, res.text
    assert res.json()["code"] == "untrainable_data" and words in res.json()["detail"]
    assert "ratings.csv" in res.json()["detail"]
    assert_nothing_written(sessions, settings)


def test_threshold_that_leaves_one_user_is_refused(client: TestClient) -> None:
    res = upload(client, CSV, rating_col="rating", rating_threshold="5")
    assert res.status_code == 422 and res.json()["code"] == "untrainable_data"


# --- multipart, names, separators --------------------------------------------------------------------


def test_truncated_multipart_body_is_refused(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    chunks, ctype = multipart_chunks(CSV, "r.csv")
    body = b"".join(chunks)
    cut = body[: body.rindex(b"\r\n--")]  # everything but the closing boundary
    for truncated in (cut, cut[:-5], body[: len(body) // 2]):
        res = client.post("/datasets", content=truncated, headers={"content-type": ctype})
        assert res.status_code == 422, res.text
        assert res.json()["code"] == "malformed_multipart"
    assert_nothing_written(sessions, settings)
    assert client.post("/datasets", content=body, headers={"content-type": ctype}).status_code == 201


@pytest.mark.parametrize("filename", ["r\u202ecsv.exe.csv", "r\ufffd.csv", "a\u200bb.csv", "x\ue000.csv"])
def test_filenames_with_invisible_or_invalid_characters_are_refused(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings, filename: str
) -> None:
    res = upload(client, CSV, filename)
    assert res.status_code == 422 and res.json()["code"] == "invalid_filename"
    assert_nothing_written(sessions, settings)


@pytest.mark.parametrize("filename", ["%2e%2e%2fetc.csv", "ratings [v2].csv", "über.csv", "(x).csv"])
def test_default_name_passes_the_name_check(client: TestClient, filename: str) -> None:
    res = upload(client, CSV, filename)
    assert res.status_code == 201, res.text
    body = res.json()
    assert body["name"] == f"dataset-{body['id'][:8]}" and body["original_filename"] == filename
    assert upload(client, CSV, "my ratings_v2.csv").json()["name"] == "my ratings_v2"


@pytest.mark.parametrize("sep", [";;", "::::", "ab", "é", "\u00a0", "a", '"', "\n"])
def test_bad_separators_are_a_422_naming_sep(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings, sep: str
) -> None:
    res = upload(client, CSV, sep=sep)
    assert res.status_code == 422, res.text
    assert res.json()["code"] == "validation_error" and res.json()["detail"].startswith("sep")
    assert_nothing_written(sessions, settings)


def test_tab_separator_also_as_backslash_t(client: TestClient) -> None:
    data = b"user_id\titem_id\nu1\ti1\nu1\ti2\nu2\ti1\n"
    for sep in ("\t", "\\t"):
        res = upload(client, data, "t.csv", sep=sep)
        assert res.status_code == 201, res.text
        assert res.json()["sep"] == "\t" and res.json()["n_interactions"] == 3


# --- crash leftovers ---------------------------------------------------------------------------------


def _age(folder: Path, seconds: float) -> None:
    old = time.time() - seconds
    for p in [folder, *folder.iterdir()]:
        os.utime(p, (old, old))


def test_sweep_removes_only_old_folders_without_a_row(settings: Settings, sessions: sessionmaker[Session]) -> None:
    root = settings.artifact_dir / "datasets"
    kept_id = add_dataset(sessions, path="datasets/x/data.csv")
    folders = {name: root / name for name in ("a" * 32, "b" * 32, kept_id, "not-an-id")}
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "upload.part").write_bytes(b"user_id,item_id\nu1,")
    _age(folders["a" * 32], 7200)  # a crash an hour ago
    _age(folders[kept_id], 7200)  # a real data set
    _age(folders["not-an-id"], 7200)  # not ours to judge
    # "b" is fresh: another API process may be uploading into it right now.
    assert sweep_upload_leftovers(settings.artifact_dir, sessions, 3600) == ["a" * 32]
    assert sorted(p.name for p in root.iterdir()) == sorted(["b" * 32, kept_id, "not-an-id"])


def test_sweep_removes_at_once_what_a_dead_process_left(settings: Settings, sessions: sessionmaker[Session]) -> None:
    # kill -9 of serve mid-upload, restarted at once: its folder is fresh, but its owner is gone.
    import socket
    import subprocess
    import sys

    root = settings.artifact_dir / "datasets"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    owners = {"e" * 32: f"{socket.gethostname()} {dead}",  # this host, pid gone: removed
              "f" * 32: f"{socket.gethostname()} {os.getpid()}",  # alive (uploading now): kept
              "0" * 32: f"other-host {dead}"}  # another host's process: only age decides
    for name, owner in owners.items():
        (root / name).mkdir(parents=True)
        (root / name / "upload.part").write_bytes(b"partial")
        (root / name / OWNER_FILE).write_text(owner)
    assert sweep_upload_leftovers(settings.artifact_dir, sessions, 3600) == ["e" * 32]


def test_startup_sweeps_leftovers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home3", upload_leftover_age_s=1, ingest_wait_s=1, ingest_timeout_s=1)
    settings.ensure_dirs()
    Base.metadata.create_all(get_engine(settings.database_url))
    stale = settings.artifact_dir / "datasets" / ("c" * 32)
    stale.mkdir(parents=True)
    (stale / "upload.part").write_bytes(b"partial")
    _age(stale, 120)
    with TestClient(build_app(settings, RecordingQueue())) as client:
        assert client.get("/healthz").status_code == 200
    assert not stale.exists()


def test_cleanup_never_raises(settings: Settings) -> None:
    def broken() -> Session:
        raise RuntimeError("database down")

    stale = settings.artifact_dir / "datasets" / ("d" * 32)
    stale.mkdir(parents=True)
    _age(stale, 10**6)
    assert cleanup_upload_leftovers(settings, broken) == []  # type: ignore[arg-type]
    assert stale.exists()  # unknown whether it has a row: kept


def test_upload_still_streams_to_disk(client: TestClient) -> None:
    # Regression guard for the child path with an in-memory-sized body spread over many chunks.
    ok = b"user_id,item_id\n" + b"".join(f"u{i % 97},i{i % 89}\n".encode() for i in range(20_000))
    res = client.post("/datasets", files={"file": ("ok.csv", io.BytesIO(ok), "text/csv")})
    assert res.status_code == 201 and res.json()["n_users"] == 97
