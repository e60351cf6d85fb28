"""What one request may cost: exclude lists, batch sizes, body size and stalled bodies (issue 10, items 1, 5, 9)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import API_KEY, RecordingQueue, add_model, build_app, make_settings
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.query import parse_exclude
from core.db.models import Base
from core.db.session import dispose_engines, get_engine, session_factory
from core.index import ServingBundle, _comma_id_widths
from core.settings import Settings


@pytest.fixture()
def served(client: TestClient, sessions: sessionmaker[Session], settings: Settings) -> Iterator[ServingBundle]:
    mid = add_model(sessions, settings)
    assert client.post(f"/models/{mid}/activate").status_code == 200
    yield ServingBundle.load(settings.artifact_dir / "models" / mid / "serving")


class CountingIndex(dict[str, int]):
    """An item index that counts membership tests: the parser's work."""

    lookups = 0

    def __contains__(self, key: object) -> bool:
        CountingIndex.lookups += 1
        return super().__contains__(key)


class FakeBundle:
    def __init__(self, ids: list[str]) -> None:
        self.item_index = CountingIndex({i: n for n, i in enumerate(ids)})
        self.comma_id_widths = _comma_id_widths(self.item_index)


def test_exclude_parsing_is_linear_in_the_parts() -> None:
    # 2,600 unknown ids froze the server for 40 s: each start position tried every longer run of pieces.
    # Even a catalogue with an id of 999 commas only glues runs that start with that id's first piece.
    bundle = FakeBundle(["a", "b", "Godfather, The (1972)", ",".join(["y"] * 1000)])
    CountingIndex.lookups = 0
    parts = [f"x{i}" for i in range(1000)]
    assert parse_exclude([",".join(parts)], bundle, 1000) == parts  # type: ignore[arg-type]
    # per part: one run tried (no id starts with "x..."), two membership tests, plus the whole value
    assert CountingIndex.lookups <= 1 + 1000 * 2
    CountingIndex.lookups = 0
    long_id = ",".join(["y"] * 1000)
    assert parse_exclude([f"{long_id},z"], bundle, 2000) == [long_id, "z"]  # type: ignore[arg-type]
    assert CountingIndex.lookups <= 6


def test_exclude_keeps_ids_with_commas_and_spaces() -> None:
    bundle = FakeBundle(["a", "b", "Godfather, The (1972)", "x,y,z"])
    got = parse_exclude(["a,Godfather, The (1972), b,x,y,z,q"], bundle, 100)  # type: ignore[arg-type]
    assert got == ["a", "Godfather, The (1972)", "b", "x,y,z", "q"]


def test_exclude_over_the_limit_is_a_422_naming_exclude(client: TestClient, served: ServingBundle,
                                                        settings: Settings) -> None:
    many = ",".join(f"i{n}" for n in range(settings.max_exclude + 1))
    res = client.get("/recommend/u1", params={"exclude": many})
    assert res.status_code == 422 and res.json()["code"] == "too_many_excluded"
    assert res.json()["detail"].startswith("exclude:")
    ok = client.get("/recommend/u1", params={"exclude": ",".join(f"i{n}" for n in range(settings.max_exclude))})
    assert ok.status_code == 200
    res = client.post("/recommend/batch", json={"users": ["u1"], "exclude": ["i1"] * (settings.max_exclude + 1)})
    assert res.status_code == 422 and "exclude" in res.json()["detail"]


def test_batch_size_and_amplification_are_bounded(tmp_path: Path) -> None:
    # 10,000 users x k = 1000 in ~100 KB returned 188 MB and stalled the event loop for 4.4 s.
    settings = make_settings(tmp_path / "home", max_batch_users=3, max_batch_items=10)
    settings.ensure_dirs()
    Base.metadata.create_all(get_engine(settings.database_url))
    try:
        with TestClient(build_app(settings, RecordingQueue()), headers={"X-API-Key": API_KEY}) as c:
            mid = add_model(session_factory(settings.database_url), settings)
            assert c.post(f"/models/{mid}/activate").status_code == 200
            res = c.post("/recommend/batch", json={"users": ["u1", "u2", "u3", "u4"]})
            assert res.status_code == 422 and res.json()["code"] == "batch_too_large"
            assert res.json()["detail"].startswith("users: at most 3 users")
            res = c.post("/recommend/batch", json={"users": ["u1", "u2"], "k": 3, "offset": 3})
            assert res.status_code == 422 and res.json()["code"] == "batch_too_large"
            assert res.json()["detail"].startswith("users:") and "RECDISTILL_MAX_BATCH_ITEMS" in res.json()["detail"]
            res = c.post("/recommend/batch", json={"users": ["u1", "u2"], "k": 3, "offset": 2})
            assert res.status_code == 200 and [len(d["items"]) for d in res.json()["data"]] == [3, 3]
    finally:
        dispose_engines()


def test_body_over_the_limit_is_413(client: TestClient, settings: Settings) -> None:
    big = {"dataset_id": "0" * 32, "pad": "x" * (settings.max_body_kb * 1024)}
    res = client.post("/jobs", json=big)
    assert res.status_code == 413 and res.json()["code"] == "payload_too_large"
    res = client.post("/datasets", content=b"x", headers={"Content-Length": str(10 << 20),
                                                          "Content-Type": "multipart/form-data; boundary=b"})
    assert res.status_code == 413 and "1 MiB (RECDISTILL_MAX_UPLOAD_MB)" in res.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"dataset_id": "'
        for _ in range(settings.max_body_kb + 1):
            yield b"x" * 1024
        yield b'"}'

    res = client.post("/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert res.status_code == 413 and "limit of 1024 KiB (RECDISTILL_MAX_BODY_KB)" in res.json()["detail"]


def test_deeply_nested_json_is_a_clear_400(client: TestClient) -> None:
    res = client.post("/jobs", content=b"[" * 100_000 + b"]" * 100_000, headers={"Content-Type": "application/json"})
    assert res.status_code == 400 and res.json() == {"detail": "malformed JSON body: nested too deeply",
                                                     "code": "malformed_json"}


def _call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    """Run one request through the ASGI app whose body never arrives; return what it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    return sent


@pytest.mark.parametrize("path", ["/jobs", "/datasets"])
def test_a_stalled_body_is_answered_408(tmp_path: Path, path: str) -> None:
    settings = make_settings(tmp_path / "home", body_timeout_s=0.2)
    settings.ensure_dirs()
    Base.metadata.create_all(get_engine(settings.database_url))
    try:
        app = build_app(settings, RecordingQueue())
        ctype = b"application/json" if path == "/jobs" else b"multipart/form-data; boundary=xyz"
        sent = _call(app, "POST", path, [(b"x-api-key", API_KEY.encode()), (b"content-type", ctype),
                                         (b"content-length", b"100")])
        start = next(m for m in sent if m["type"] == "http.response.start")
        assert start["status"] == 408
        assert (b"connection", b"close") in start["headers"]
        assert b"RECDISTILL_BODY_TIMEOUT" in b"".join(m.get("body", b"") for m in sent)
        if path == "/datasets":  # nothing of the stalled upload is left behind
            assert not any((settings.artifact_dir / "datasets").glob("*/*"))
    finally:
        dispose_engines()
