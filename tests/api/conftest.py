"""Fixtures: the real app on a fresh SQLite home (tables from the SQLAlchemy metadata), a recording queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import API_KEY, RecordingQueue, build_app, make_settings
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from core.db.models import Base
from core.db.session import dispose_engines, get_engine, session_factory
from core.settings import Settings


@pytest.fixture()
def settings(tmp_path: Path) -> Iterator[Settings]:
    s = make_settings(tmp_path / "home")
    s.ensure_dirs()
    Base.metadata.create_all(get_engine(s.database_url))
    yield s
    dispose_engines()


@pytest.fixture()
def sessions(settings: Settings) -> sessionmaker[Session]:
    return session_factory(settings.database_url)


@pytest.fixture()
def queue() -> RecordingQueue:
    return RecordingQueue()


@pytest.fixture()
def app(settings: Settings, queue: RecordingQueue) -> FastAPI:
    return build_app(settings, queue)


@pytest.fixture()
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, headers={"X-API-Key": API_KEY}) as c:
        yield c


@pytest.fixture()
def anon(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c
