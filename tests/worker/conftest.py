"""Fixture for worker tests: a migrated embedded home (SQLite database, SQLite queue, local artifacts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.db.migrate import upgrade_head
from core.db.session import dispose_engines
from core.settings import Settings


@pytest.fixture()
def embedded(tmp_path: Path) -> Iterator[Settings]:
    s = Settings(
        RECDISTILL_HOME=str(tmp_path),
        RECDISTILL_DEVICE="cpu",
        RECDISTILL_HEARTBEAT=0.5,
        RECDISTILL_JOB_LEASE=3,
    )
    s.ensure_dirs()
    upgrade_head(s.database_url)
    yield s
    dispose_engines()
