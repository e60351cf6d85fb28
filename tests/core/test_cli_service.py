"""``recdistill migrate`` / ``serve`` / ``worker`` command wiring (the long-running ones are exercised in
tests/worker and tests/integration)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from core import cli_service
from core.db.migrate import current_revision

ROOT = Path(__file__).resolve().parents[2]


def test_migrate_command_creates_the_embedded_database(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_DIR")
    }
    env["RECDISTILL_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "core.cli", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert current_revision(f"sqlite:///{tmp_path / 'home' / 'recdistill.db'}") == "0001"
    assert (tmp_path / "home" / "artifacts").is_dir()


def test_commands_and_defaults_are_registered() -> None:
    parser = argparse.ArgumentParser()
    cli_service.register(parser.add_subparsers(dest="command"))
    serve = parser.parse_args(["serve"])
    assert serve.handler is cli_service.run_serve and serve.local_worker is None and serve.migrate
    assert parser.parse_args(["serve", "--no-worker"]).local_worker is False
    worker = parser.parse_args(["worker"])
    assert worker.handler is cli_service.run_worker and worker.pool == "solo" and not worker.migrate
    assert parser.parse_args(["migrate"]).handler is cli_service.run_migrate
