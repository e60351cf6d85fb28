"""POST/GET/DELETE /datasets: streamed upload, stats, and every bad upload refused with nothing left behind."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from api_support import add_dataset, count_rows
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from core.db import repo
from core.db.models import Dataset
from core.settings import Settings

CSV = b"user_id,item_id,rating\nu1,i1,5\nu1,i2,3\nu2,i1,4\nu3,i3,1\n"


def upload(client: TestClient, content: bytes, filename: str = "ratings.csv", **fields: str):  # noqa: ANN201
    return client.post("/datasets", files={"file": (filename, io.BytesIO(content), "text/csv")}, data=fields)


def assert_nothing_written(sessions: sessionmaker[Session], settings: Settings) -> None:
    assert count_rows(sessions, Dataset) == 0
    folder = settings.artifact_dir / "datasets"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_upload_reports_stats_and_stores_file(client: TestClient, settings: Settings) -> None:
    res = upload(client, CSV, rating_col="rating", rating_threshold="3")
    assert res.status_code == 201, res.text
    body = res.json()
    assert (body["n_users"], body["n_items"], body["n_interactions"]) == (2, 2, 3)
    assert body["density"] == pytest.approx(3 / 4)
    assert body["name"] == "ratings" and body["original_filename"] == "ratings.csv"
    stored = list((settings.artifact_dir / "datasets" / body["id"]).iterdir())
    assert [p.name for p in stored] == ["data.csv"] and stored[0].read_bytes() == CSV
    assert client.get(f"/datasets/{body['id']}").json()["id"] == body["id"]
    assert [d["id"] for d in client.get("/datasets").json()["data"]] == [body["id"]]


def test_upload_tsv_inter_and_parquet(client: TestClient, tmp_path: Path) -> None:
    inter = b"user_id:token\titem_id:token\trating:float\n1\t10\t4\n2\t10\t5\n2\t11\t3\n"
    assert upload(client, inter, "ml.inter").json()["n_interactions"] == 3
    buf = io.BytesIO()
    # Trainable: two users, two items, user b can hold one out (a 2x1 set is now refused, issue 10).
    pd.DataFrame({"u": ["a", "b", "b"], "i": ["x", "x", "y"]}).to_parquet(buf)
    res = upload(client, buf.getvalue(), "p.parquet", user_col="u", item_col="i", name="my data")
    assert res.status_code == 201, res.text
    assert res.json()["name"] == "my data" and res.json()["n_users"] == 2
    res = upload(client, CSV, "ratings [v2] (copy).csv")
    assert res.status_code == 201 and res.json()["original_filename"] == "ratings [v2] (copy).csv"


def test_custom_separator_is_stored_and_returned(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    res = upload(client, b"user_id;item_id\nu1;i1\nu2;i1\nu2;i2\n", "semi.csv", sep=";")
    assert res.status_code == 201, res.text
    body = res.json()
    assert (body["sep"], body["n_interactions"]) == (";", 3)
    assert client.get(f"/datasets/{body['id']}").json()["sep"] == ";"
    with sessions() as session:
        assert repo.get_dataset(session, body["id"]).sep == ";"  # the worker reads it from the row
    assert upload(client, CSV).json()["sep"] is None


@pytest.mark.parametrize(
    ("content", "filename", "fields", "status", "words"),
    [
        (b"", "empty.csv", {}, 422, "empty"),
        (b"user_id;item_id\nu1;i1\n", "semi.csv", {}, 422, "delimiter"),
        (CSV, "r.csv", {"user_col": "uid"}, 422, "uid"),
        (CSV, "r.csv", {"item_col": "movie"}, 422, "movie"),
        (b"user_id,item_id,rating\nu1,i1,5\nu2,i2,five\n", "r.csv", {"rating_col": "rating"}, 422, "five"),
        (b"x" * (1024 * 1024 + 10), "big.csv", {}, 413, "limit"),
        (CSV, "r.csv", {"name": "../../etc/passwd"}, 422, "name"),
        (CSV, "../../etc/passwd", {}, 422, "filename"),
        (CSV, "r.exe", {}, 422, "extension"),
        (CSV, "..\\windows\\x.csv", {}, 422, "filename"),
        (CSV, "r.csv", {"rating_threshold": "3"}, 422, "rating_col"),
        (CSV, "r.csv", {"colour": "red"}, 422, "colour"),
        (CSV, "r.csv", {"format": "xlsx"}, 422, "format"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    client: TestClient,
    sessions: sessionmaker[Session],
    settings: Settings,
    content: bytes,
    filename: str,
    fields: dict[str, str],
    status: int,
    words: str,
) -> None:
    res = upload(client, content, filename, **fields)
    assert res.status_code == status, res.text
    body = res.json()
    assert words in body["detail"] and body["code"]
    assert_nothing_written(sessions, settings)


def test_missing_file_part_and_non_multipart(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    res = client.post("/datasets", data={"name": "x"}, files={"other": ("a.csv", b"1", "text/csv")})
    assert res.status_code == 422 and "file" in res.json()["detail"]
    res = client.post("/datasets", json={"name": "x"})
    assert res.status_code == 422 and "multipart" in res.json()["detail"]
    assert_nothing_written(sessions, settings)


def test_writes_need_the_api_key(
    anon: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    res = upload(anon, CSV)
    assert res.status_code == 401 and "X-API-Key" in res.json()["detail"]
    res = anon.post("/datasets", files={"file": ("r.csv", CSV)}, headers={"X-API-Key": "wrong"})
    assert res.status_code == 403 and res.json()["code"] == "invalid_api_key"
    assert_nothing_written(sessions, settings)
    # Issue 10: reads need the key too (they were open by default).
    assert anon.get("/datasets").status_code == 401


def test_unknown_and_path_like_ids(client: TestClient) -> None:
    res = client.get("/datasets/" + "0" * 32)
    assert res.status_code == 404 and "0" * 32 in res.json()["detail"]
    res = client.get("/datasets/..%2F..%2Fetc%2Fpasswd")
    assert res.status_code in (404, 422)
    res = client.delete("/datasets/..%2F..%2Fetc%2Fpasswd")
    assert res.status_code in (404, 422)
    res = client.get("/datasets/abc")
    assert res.status_code == 422 and "dataset_id" in res.json()["detail"]


def test_delete_removes_files_and_is_refused_while_a_job_uses_it(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    ds = upload(client, CSV).json()
    folder = settings.artifact_dir / "datasets" / ds["id"]
    with sessions() as s:
        job = repo.create_job(
            s,
            dataset_id=ds["id"],
            method="dcd",
            student={"model": "bpr", "dim": 4},
            teacher={"model": "bpr", "dim": 8},
        )
        s.commit()
        job_id = job.id
    res = client.delete(f"/datasets/{ds['id']}")
    assert res.status_code == 409 and job_id in res.json()["detail"]
    assert folder.is_dir()
    with sessions() as s:
        repo.get_job(s, job_id).status = "succeeded"
        s.commit()
    assert client.delete(f"/datasets/{ds['id']}").status_code == 204
    assert not folder.exists()
    assert client.get(f"/datasets/{ds['id']}").status_code == 404


def test_list_paging(client: TestClient, sessions: sessionmaker[Session]) -> None:
    for i in range(3):
        add_dataset(sessions, name=f"d{i}")
    assert client.get("/datasets", params={"limit": 2}).json()["count"] == 2
    res = client.get("/datasets", params={"limit": 0})
    assert res.status_code == 422 and "limit" in res.json()["detail"]


def multipart_chunks(content: bytes, filename: str, boundary: str = "xyzBOUNDARY") -> tuple[list[bytes], str]:
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: text/csv\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    body = head + content + tail
    return [body[i : i + 65536] for i in range(0, len(body), 65536)], f"multipart/form-data; boundary={boundary}"


def test_size_limit_is_enforced_while_streaming_without_content_length(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    big = b"user_id,item_id\n" + b"u1,i1\n" * 200_000  # 1.2 MB > the 1 MiB limit
    chunks, ctype = multipart_chunks(big, "big.csv")
    res = client.post("/datasets", content=iter(chunks), headers={"content-type": ctype})
    assert res.status_code == 413 and "limit" in res.json()["detail"]
    assert_nothing_written(sessions, settings)
    ok = b"user_id,item_id\n" + b"".join(f"u{i % 97},i{i % 89}\n".encode() for i in range(60_000))  # ~0.6 MB
    chunks, ctype = multipart_chunks(ok, "ok.csv")
    res = client.post("/datasets", content=iter(chunks), headers={"content-type": ctype})
    assert res.status_code == 201, res.text
    assert res.json()["size_bytes"] == len(ok) and res.json()["n_users"] == 97
