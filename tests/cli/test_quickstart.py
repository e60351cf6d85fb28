"""`recdistill quickstart`: argument handling, progress rendering, server reuse; end to end when slow."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest

from cli import quickstart as qs
from core.settings import Settings
from tests.factories import free_port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recdistill")
    qs.register(parser.add_subparsers(dest="command"))
    return parser


def test_defaults_parse_into_specs() -> None:
    args = _parser().parse_args(["quickstart"])
    assert args.teacher == {"model": "bpr", "dim": 64} and args.student == {"model": "bpr", "dim": 8}
    assert (args.method, args.dataset, args.k, args.handler) == ("dcd", "ml-100k", 10, qs._handler)
    args = _parser().parse_args(
        ["quickstart", "--teacher", "LightGCN:128", "--epochs", "3", "--port", "8123"]
    )
    assert args.teacher == {"model": "lightgcn", "dim": 128} and args.epochs == 3 and args.port == 8123


def test_extra_hyperparameters_are_typed_from_json() -> None:
    args = _parser().parse_args(["quickstart", "--set", "lr=0.01", "--set", "patience=3", "--set", "x=abc"])
    assert dict(args.set) == {"lr": 0.01, "patience": 3, "x": "abc"}


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--teacher", "bpr"], "--teacher"),
        (["--student", "bpr:0"], "--student"),
        (["--student", ":8"], "--student"),
        (["--epochs", "-1"], "--epochs"),
        (["--k", "ten"], "--k"),
        (["--set", "lr"], "--set"),
    ],
)
def test_bad_arguments_name_the_field(
    argv: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["quickstart", *argv])
    assert f"{field}: expected" in capsys.readouterr().err


def test_client_url_maps_wildcards_to_loopback() -> None:
    assert qs.client_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert qs.client_url("::1", 9) == "http://[::1]:9"
    assert qs.client_url("example.internal", 80) == "http://example.internal:80"


JOB = {
    "status": "running",
    "phase": "distill",
    "epoch": 3,
    "max_epochs": 40,
    "progress": 0.5,
    "history": [
        {"phase": "teacher", "epoch": 9, "losses": {"total": 9.0}, "valid": {"ndcg@10": 0.3}},
        {"phase": "distill", "epoch": 3, "losses": {"base": 0.2, "total": 0.5}, "valid": {"ndcg@10": 0.125}},
        {"phase": "teacher", "epoch": 10, "losses": {"total": 8.0}, "valid": {}},
    ],
}


def test_progress_view_takes_the_latest_entry_of_the_current_phase() -> None:
    view = qs.progress_view(JOB)
    assert (view.phase, view.epoch, view.max_epochs, view.fraction) == ("distill", 3, 40, 0.5)
    assert (view.loss, view.ndcg) == (0.5, 0.125)
    assert qs.describe(view) == ("distill 3/40", "loss=0.5000 valid ndcg@10=0.1250")


def test_progress_view_of_a_queued_job_and_odd_values() -> None:
    view = qs.progress_view({"status": "queued", "phase": None, "progress": 1.7, "history": None})
    assert (view.phase, view.fraction, view.loss, view.ndcg) == ("queued", 1.0, None, None)
    assert qs.describe(view) == ("queued", "")
    no_total = qs.progress_view(
        {"status": "running", "phase": "teacher", "history": [{"losses": {"bpr": 0.7}}]}
    )
    assert no_total.loss == 0.7


class _Handler(BaseHTTPRequestHandler):
    body = b'{"status": "ok"}'
    code = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(self.code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_server(request: pytest.FixtureRequest) -> Iterator[int]:
    handler = type("H", (_Handler,), dict(getattr(request, "param", {})))
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_probe_tells_ours_from_free() -> None:
    assert qs.probe(f"http://127.0.0.1:{free_port()}") == "free"


def test_running_server_is_reused_without_starting_another(fake_server: int, tmp_path: Path) -> None:
    settings = Settings(RECDISTILL_HOME=tmp_path)
    (tmp_path / "serve.pid").write_text(f"{os.getpid()}\n")
    server = qs.ensure_server(settings, "127.0.0.1", fake_server)
    assert (server.started, server.pid, server.url) == (False, os.getpid(), f"http://127.0.0.1:{fake_server}")
    assert not (tmp_path / "serve.log").exists()


@pytest.mark.parametrize("fake_server", [{"code": 404, "body": b"<html>nginx</html>"}], indirect=True)
def test_a_foreign_server_on_the_port_is_refused(fake_server: int, tmp_path: Path) -> None:
    assert qs.probe(f"http://127.0.0.1:{fake_server}") == "foreign"
    with pytest.raises(qs.QuickstartError, match=f"port {fake_server}: something that is not recdistill"):
        qs.ensure_server(Settings(RECDISTILL_HOME=tmp_path), "127.0.0.1", fake_server)


def test_read_pid_ignores_dead_or_garbled_files(tmp_path: Path) -> None:
    pid_file = tmp_path / "serve.pid"
    assert qs.read_pid(pid_file) is None
    pid_file.write_text("not a pid")
    assert qs.read_pid(pid_file) is None


def test_follow_polls_until_the_job_ends() -> None:
    states = iter(
        [
            {"status": "queued", "phase": None, "progress": 0.0, "history": []},
            {**JOB},
            {**JOB, "status": "succeeded", "phase": "index", "progress": 1.0, "student_model_id": "s" * 32},
        ]
    )
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json=next(states))

    with httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler)) as client:
        job = qs.follow(client, "j" * 32, timeout_s=10, poll_s=0)
    assert job["status"] == "succeeded" and seen == [f"/jobs/{'j' * 32}"] * 3


def test_api_errors_quote_the_server_detail() -> None:
    transport = httpx.MockTransport(
        lambda r: httpx.Response(422, json={"detail": "student.dim: too big", "code": "x"})
    )
    with httpx.Client(base_url="http://test", transport=transport) as client:
        with pytest.raises(qs.QuickstartError, match=r"POST /jobs -> HTTP 422: student.dim: too big"):
            qs.call(client, "POST", "/jobs", json={})


def test_first_user(tmp_path: Path) -> None:
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\n196\t242\n186\t302\n")
    assert qs.first_user(path) == "196"
    (tmp_path / "empty.inter").write_text("user_id:token\titem_id:token\n")
    with pytest.raises(qs.QuickstartError, match="pass --user"):
        qs.first_user(tmp_path / "empty.inter")


def test_the_report_is_the_apis_report_as_text() -> None:
    """The quick start prints GET /models/{id}/report through core.report's one formatter (it replaced the
    metrics-only table: same metric rows, plus size, latency and the gap)."""
    lat = {"p50_ms": 0.25, "p99_ms": 1.5, "queries": 200, "k": 10, "method": "faiss-flat", "servable": True}
    side = {"model_id": "t" * 32, "model_name": "bpr", "dim": 64, "n_params": 160_000, "size_bytes": 640_000,
            "metrics": {"ndcg@10": 0.3}, "latency": lat}
    report = {"model_id": "s" * 32, "metric": "ndcg@10", "times_smaller": 8.0, "teacher_share": 0.8,
              "gap_closed": None, "notes": ["gap closed unknown: no student-alone run"], "teacher": side,
              "student": {**side, "model_id": "s" * 32, "dim": 8, "n_params": 20_000, "size_bytes": 80_000,
                          "metrics": {"ndcg@10": 0.24, "recall@10": 0.25}}}
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(200, json=report)

    with httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler)) as client:
        text = qs.report_text(client, "s" * 32)
    assert paths == [f"/models/{'s' * 32}/report"]
    lines = text.splitlines()
    assert lines[0] == "|  | teacher bpr:64 | student bpr:8 |"
    assert lines[2:4] == ["| ndcg@10 | 0.3000 | 0.2400 |", "| recall@10 | - | 0.2500 |"]
    assert "| parameters | 160,000 | 20,000 |" in lines and "| weights on disk | 0.640 MB | 0.080 MB |" in lines
    assert "| recommend p99 (k=10) | 1.500 ms | 1.500 ms |" in lines and "| timed as | faiss-flat | faiss-flat |" in lines
    assert "8.0x fewer parameters than the teacher; student ndcg@10 = 80.0 % of the teacher's." in lines
    assert lines[-1] == "Note: gap closed unknown: no student-alone run."


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quickstart_end_to_end(tmp_path: Path) -> None:
    """The README's first command on a fresh home: server up, DCD job done, recommendations printed."""
    port = free_port()
    env = {**os.environ, "RECDISTILL_HOME": str(tmp_path / "home"), "RECDISTILL_PORT": str(port)}
    env.pop("RECDISTILL_API_KEY", None)
    cmd = [sys.executable, "-c", qs.SERVE_CODE, "quickstart", "--teacher-epochs", "3", "--epochs", "2"]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        out = done.stdout
        assert re.search(r"Top-10 for user 196 \(personalized\):", out), out
        assert len(re.findall(r"^\s+\d+\. \S+", out, flags=re.M)) == 10
        assert "Activated student" in out and "| ndcg@10 |" in out and f"http://127.0.0.1:{port}" in out
        assert re.search(r"\| recommend p50 \(k=10\) \| [\d.]+ ms \| [\d.]+ ms \|", out), out
        health = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
        assert health["status"] == "ready"
        # Second run: the same server and the same dataset are reused.
        again = subprocess.run(
            cmd[:-4] + ["--teacher-epochs", "1", "--epochs", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "Reusing the recdistill server" in again.stdout and "Reusing dataset ml-100k" in again.stdout
    finally:
        pid = qs.read_pid(tmp_path / "home" / "serve.pid")
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)
