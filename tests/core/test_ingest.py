"""core.ingest: the decompressed-size count, the trainability check and the child's JSON answer."""

from __future__ import annotations

import dataclasses
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core.data import Interactions, UntrainableData, check_trainable
from core.ingest import DecompressedTooLarge, IngestRequest, decompressed_size


def request(path: Path, **over: object) -> IngestRequest:
    values: dict[str, object] = dict(path=str(path), fmt="csv", user_col="user_id", item_col="item_id",
                                     rating_col=None, timestamp_col=None, sep=None, rating_threshold=None,
                                     max_decompressed_bytes=10**6, timeout_s=30)
    values.update(over)
    return IngestRequest(**values)  # type: ignore[arg-type]


def test_decompressed_size_counts_through_a_capped_stream(tmp_path: Path) -> None:
    data = b"user_id,item_id\n" + b"u1,i1\n" * 10_000
    plain, packed = tmp_path / "a.csv", tmp_path / "a.csv.gz"
    plain.write_bytes(data)
    packed.write_bytes(gzip.compress(data))
    assert decompressed_size(plain, "csv", 10**6) == len(data)
    assert decompressed_size(packed, "csv", 10**6) == len(data)
    with pytest.raises(DecompressedTooLarge):
        decompressed_size(packed, "csv", 1000)


def test_parquet_counts_its_uncompressed_column_chunks(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pd.DataFrame({"user_id": [f"u{i}" for i in range(5000)], "item_id": ["x"] * 5000}).to_parquet(path)
    size = decompressed_size(path, "parquet", 10**8)
    assert size >= path.stat().st_size
    with pytest.raises(DecompressedTooLarge):
        decompressed_size(path, "parquet", size - 1)


@pytest.mark.parametrize(
    ("users", "items", "ok"),
    [
        (["a"], ["x"], False),
        (["a", "a"], ["x", "y"], False),
        (["a", "b"], ["x", "x"], False),
        (["a", "b"], ["x", "y"], False),  # nobody can hold one out
        (["a", "a", "b"], ["x", "y", "x"], True),
    ],
)
def test_check_trainable(users: list[str], items: list[str], ok: bool) -> None:
    inter = Interactions.from_arrays(users, items)
    if ok:
        check_trainable(inter)
    else:
        with pytest.raises(UntrainableData):
            check_trainable(inter)


def test_child_answers_one_json_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("user_id,item_id\nu1,i1\nu1,i2\nu2,i1\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id\nu1,i1\n")
    answers = []
    for p in (path, bad):
        proc = subprocess.run([sys.executable, "-m", "core.ingest"], capture_output=True, check=True,
                              input=json.dumps(dataclasses.asdict(request(p))).encode())
        answers.append(json.loads(proc.stdout.decode().strip().splitlines()[-1]))
    assert answers[0]["ok"] and (answers[0]["n_users"], answers[0]["n_items"], answers[0]["n_interactions"]) == (2, 2, 3)
    assert answers[1] == {**answers[1], "ok": False, "status": 422, "code": "untrainable_data"}
