"""Schemathesis, every check, against a real ``recdistill serve`` that serves a trained, active model.

The same run by hand (from the repository root, which holds schemathesis.toml), against a server started
with ``RECDISTILL_API_KEY=<key> recdistill serve``:

    st run http://127.0.0.1:8000/openapi.json --checks all -H "X-API-Key: <key>" --max-examples 100
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.db import repo
from core.db.migrate import upgrade_head
from core.db.session import dispose_engines, session_scope
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KEY = "schemathesis-key"
# Small and bounded: about 10 s on a busy 2-core machine, training and server start-up included.
MAX_EXAMPLES = 15
SEED = 1
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

sys.path.insert(0, str(ROOT / "tests" / "worker"))
from jobkit import Server, create_job  # noqa: E402


def _st() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    return found


def _trained_home(home: Path) -> Settings:
    """A migrated embedded home whose active model came out of a real (tiny) job."""
    from core.jobs.lifecycle import run_job  # torch: imported only here

    settings = Settings(RECDISTILL_HOME=str(home), RECDISTILL_DEVICE="cpu", RECDISTILL_API_KEY=KEY,
                        RECDISTILL_TORCH_THREADS=1)
    settings.ensure_dirs()
    upgrade_head(settings.database_url)
    job_id = create_job(settings)
    assert run_job(job_id, settings, worker_id="test") == "succeeded"
    with session_scope(settings.database_url) as s:
        repo.activate_model(s, repo.get_job(s, job_id).student_model_id)
    return settings


def _serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Server:
    _st()  # skip before any work when schemathesis is missing
    settings = _trained_home(tmp_path / "home")
    for name, value in env.items():  # the server's environment is a copy of this one
        monkeypatch.setenv(name, value)
    server = Server(settings, tmp_path / "serve.log", "--no-worker")  # jobs it accepts stay queued
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def _run_schemathesis(server: Server, tmp_path: Path, key: str | None, max_examples: int) -> None:
    cmd = [
        _st(), "--config-file", str(ROOT / "schemathesis.toml"), "run", f"{server.url}/openapi.json",
        "--checks", "all", "--max-examples", str(max_examples), "--seed", str(SEED),
        "--workers", "1", "--request-timeout", "30",
    ]
    if key:
        cmd += ["-H", f"X-API-Key: {key}"]
    # Run where its caches (.hypothesis, .schemathesis) may be written and thrown away.
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-12000:] + "\n--- server log ---\n" + server.log.read_text()[-4000:]
    # Every operation of the published schema was tested (counted from it, so a new route needs no edit here).
    paths = httpx.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    n_operations = sum(1 for ops in paths.values() for method in ops if method in HTTP_METHODS)
    assert f"Tested: {n_operations}" in output and " passed" in output, output[-3000:]


def test_schemathesis_finds_no_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = _serve(tmp_path, monkeypatch, {"RECDISTILL_API_KEY": KEY})
    try:
        _run_schemathesis(server, tmp_path, KEY, MAX_EXAMPLES)
    finally:
        server.stop()
        dispose_engines()


@pytest.mark.slow  # about a minute each
@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"RECDISTILL_API_KEY": KEY}, KEY),
        ({"RECDISTILL_API_KEY": KEY, "RECDISTILL_OPEN_SERVING": "true"}, KEY),
        ({"RECDISTILL_API_KEY": ""}, None),  # no key: no security scheme, checkpoint download refused
    ],
    ids=["key", "open-serving", "no-key"],
)
def test_schemathesis_longer_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], key: str | None
) -> None:
    server = _serve(tmp_path, monkeypatch, env)
    try:
        _run_schemathesis(server, tmp_path, key, 100)
    finally:
        server.stop()
        dispose_engines()
