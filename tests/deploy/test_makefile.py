"""The Makefile's targets: every one the README names exists, and the commands they run are real
(compose services and profiles, config_table.py's flags, lint paths, the demo server's pid file)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dockerfile_checks import ROOT

MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


def recipe(target: str) -> str:
    """The recipe lines of ``target`` (tab-indented lines after ``target:``)."""
    match = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)*)", MAKEFILE, re.M)
    assert match, f"Makefile has no target {target!r}"
    return match.group(1)


def test_readme_targets_exist() -> None:
    named = set(re.findall(r"\bmake ([a-z][a-z-]+)", (ROOT / "README.md").read_text(encoding="utf-8")))
    targets = set(re.findall(r"^([a-z][a-z-]*):", MAKEFILE, re.M))
    assert named - targets == set()
    assert {"compose-up", "compose-cpu", "config-docs", "stop", "lint"} <= targets


def test_lint_covers_every_python_folder() -> None:
    paths = recipe("lint").split("ruff check", 1)[1].split()
    assert {"cli", "core", "api", "worker", "migrations", "tests", "bench", "scripts"} <= set(paths)
    assert all((ROOT / p).is_dir() for p in paths)


def test_lint_checks_the_import_contracts() -> None:
    assert "lint-imports" in recipe("lint")  # the contracts in pyproject.toml's [tool.importlinter]


def test_compose_targets_name_real_services_and_profiles() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert "docker compose up -d --build" in recipe("compose-up")
    line = recipe("compose-cpu").strip()
    assert line.startswith("docker compose --profile cpu up -d --build ")
    named = line.split("--build", 1)[1].split()
    assert named and all(s in services for s in named)
    assert "cpu" in services["worker-cpu"].get("profiles", [])
    assert not any("gpu" in name or name == "worker" for name in named)  # no GPU reservation in the CPU set


def test_config_docs_flags_are_accepted_by_config_table(tmp_path: Path) -> None:
    body = recipe("config-docs")
    assert "--format env --output .env.example" in body and "--inject docs/deploy.md" in body
    doc = tmp_path / "deploy.md"
    shutil.copy(ROOT / "docs/deploy.md", doc)
    script = str(ROOT / "scripts/config_table.py")
    env = subprocess.run(
        [sys.executable, script, "--format", "env", "--output", str(tmp_path / "env")], capture_output=True
    )
    inject = subprocess.run([sys.executable, script, "--inject", str(doc)], capture_output=True)
    assert env.returncode == 0 and inject.returncode == 0, (env.stderr, inject.stderr)
    # Both generated files already agree with the committed ones (a stale copy would show up here).
    assert (tmp_path / "env").read_text() == (ROOT / ".env.example").read_text()
    assert doc.read_text() == (ROOT / "docs/deploy.md").read_text()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_stop_without_a_server_or_with_a_stale_pid_is_harmless(tmp_path: Path) -> None:
    def stop() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "-s", "-C", str(ROOT), "stop", f"SERVE_PID={tmp_path / 'serve.pid'}"],
            capture_output=True,
            text=True,
            timeout=30,
        )

    first = stop()
    assert first.returncode == 0 and "no server to stop" in first.stdout, first.stderr
    (tmp_path / "serve.pid").write_text("999999999\n")  # above Linux's pid_max: never a live process
    second = stop()
    assert second.returncode == 0 and "is not running" in second.stdout, second.stderr
    assert not (tmp_path / "serve.pid").exists()
    assert 'kill -TERM "-$$pid"' in recipe("stop")  # the whole process group: server and its worker
