"""Settings: embedded defaults under RECDISTILL_HOME, environment overrides, validation, cache reset."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings, clear_settings_cache, get_settings, sqlite_path


def test_defaults_describe_the_embedded_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "RECDISTILL_HOME",
        "DATABASE_URL",
        "CELERY_BROKER_URL",
        "ARTIFACT_DIR",
        "RECDISTILL_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.home == tmp_path.resolve() / "var"
    assert s.database_url == f"sqlite:///{tmp_path.resolve() / 'var' / 'recdistill.db'}"
    assert s.celery_broker_url == f"sqla+sqlite:///{tmp_path.resolve() / 'var' / 'queue.db'}"
    assert s.artifact_dir == tmp_path.resolve() / "var" / "artifacts"
    assert s.embedded_broker
    assert s.api_key is None and s.open_serving is False
    assert s.max_k == 1000 and s.port == 8000 and s.index == "auto" and s.index_exact_max_items == 100_000


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECDISTILL_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1/x")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("ARTIFACT_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("RECDISTILL_API_KEY", "s3cret")
    monkeypatch.setenv("RECDISTILL_OPEN_SERVING", "true")
    monkeypatch.setenv("RECDISTILL_INDEX", "hnsw")
    monkeypatch.setenv("RECDISTILL_PORT", "9001")
    s = Settings()
    assert s.home == tmp_path / "h"
    assert s.database_url.startswith("postgresql+psycopg://")
    assert s.celery_broker_url == "redis://127.0.0.1:6379/3" and not s.embedded_broker
    assert s.artifact_dir == tmp_path / "shared"
    assert s.api_key == "s3cret" and s.open_serving is True
    assert s.index == "hnsw" and s.port == 9001


def test_home_is_not_read_from_the_shell_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RECDISTILL_HOME", raising=False)
    monkeypatch.setenv("HOME", "/somewhere/else")
    monkeypatch.chdir(tmp_path)
    assert Settings().home == tmp_path.resolve() / "var"


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("RECDISTILL_INDEX", "ivfpq", "RECDISTILL_INDEX"),
        ("RECDISTILL_INDEX_EXACT_MAX_ITEMS", "-1", "RECDISTILL_INDEX_EXACT_MAX_ITEMS"),
        ("RECDISTILL_INDEX_EXACT_MAX_ITEMS", "100000001", "RECDISTILL_INDEX_EXACT_MAX_ITEMS"),
        ("RECDISTILL_INDEX_TARGET_RECALL", "0.4", "RECDISTILL_INDEX_TARGET_RECALL"),
        ("RECDISTILL_INDEX_TARGET_RECALL", "1.5", "RECDISTILL_INDEX_TARGET_RECALL"),
        ("RECDISTILL_MAX_K", "0", "RECDISTILL_MAX_K"),
        ("RECDISTILL_PORT", "70000", "RECDISTILL_PORT"),
    ],
)
def test_bad_values_name_the_variable(key: str, value: str, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{key: value})


def test_heartbeat_must_be_below_the_lease() -> None:
    with pytest.raises(ValidationError, match="RECDISTILL_HEARTBEAT"):
        Settings(RECDISTILL_JOB_LEASE=5, RECDISTILL_HEARTBEAT=10)


def test_visibility_timeout_must_exceed_the_lease() -> None:
    # Redis would re-send a running job's message while it still runs, over and over.
    with pytest.raises(ValidationError, match="RECDISTILL_VISIBILITY_TIMEOUT"):
        Settings(RECDISTILL_JOB_LEASE=600, RECDISTILL_VISIBILITY_TIMEOUT=300)


def test_unknown_keyword_is_rejected() -> None:
    with pytest.raises(ValidationError, match="home"):
        Settings(home="/tmp/x")


def test_get_settings_is_cached_until_cleared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECDISTILL_HOME", str(tmp_path / "a"))
    clear_settings_cache()
    first = get_settings()
    monkeypatch.setenv("RECDISTILL_HOME", str(tmp_path / "b"))
    assert get_settings() is first
    clear_settings_cache()
    assert get_settings().home == tmp_path / "b"
    clear_settings_cache()


def test_sqlite_path_parses_both_schemes(tmp_path: Path) -> None:
    assert sqlite_path(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"
    assert sqlite_path(f"sqla+sqlite:///{tmp_path}/q.db") == tmp_path / "q.db"
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://x/y") is None


def test_ensure_dirs_creates_home_and_artifacts(tmp_path: Path) -> None:
    s = Settings(RECDISTILL_HOME=str(tmp_path / "home"))
    s.ensure_dirs()
    assert (tmp_path / "home").is_dir() and (tmp_path / "home" / "artifacts").is_dir()


def test_every_field_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert field.validation_alias, name
