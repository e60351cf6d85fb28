"""`recdistill quickstart`: the first run on the embedded default, over the real REST API.

Starts (or reuses) `recdistill serve`, uploads MovieLens, runs a DCD job with a progress bar, activates the
student, prints its metrics beside the teacher's and one user's recommendations, and leaves the server up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from core.config import FINAL_STATUSES as FINAL
from core.config import JobStatus
from core.report import format_report
from core.settings import Settings, get_settings

# Small enough for a few minutes on two CPU cores, large enough for a visible teacher-student gap.
DEFAULTS = {"teacher": "bpr:64", "student": "bpr:8", "teacher_epochs": 30, "epochs": 20}
HYPERPARAMETERS: dict[str, Any] = {"lr": 5e-3, "batch_size": 1024, "patience": 5}
SERVE_CODE = "import sys; from cli.main import main; sys.exit(main())"


class QuickstartError(RuntimeError):
    """A step of the quick start failed; the message says which and what to look at."""


def say(text: str = "") -> None:
    """One line for the person at the terminal (kept clear of the progress bar)."""
    tqdm.write(text, file=sys.stdout)


def parse_spec(text: str, field: str) -> dict[str, Any]:
    """``"bpr:64"`` -> ``{"model": "bpr", "dim": 64}``; a bad value names ``field``."""
    model, sep, dim = text.partition(":")
    if not sep or not model or not dim.isdigit() or int(dim) <= 0:
        raise argparse.ArgumentTypeError(f"{field}: expected MODEL:DIM with a positive DIM (e.g. bpr:64), got {text!r}")
    return {"model": model.strip().lower(), "dim": int(dim)}


def parse_setting(text: str) -> tuple[str, Any]:
    """``"lr=0.01"`` -> ``("lr", 0.01)``: a job hyperparameter; the value is read as JSON, else kept as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set: expected KEY=VALUE (e.g. lr=0.01), got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def client_url(host: str, port: int) -> str:
    """The URL a local client uses for a server bound to ``host:port`` (wildcards mean this machine)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def probe(url: str, timeout: float = 2.0) -> str:
    """"free" (nothing listens), "ours" (a recdistill /healthz answers) or "foreign" (something else)."""
    try:
        response = httpx.get(f"{url}/healthz", timeout=timeout)
    except httpx.ConnectError:
        return "free"
    except httpx.HTTPError:
        return "foreign"
    try:
        ok = response.status_code == 200 and response.json().get("status") == "ok"
    except ValueError:
        ok = False
    return "ours" if ok else "foreign"


@dataclass
class Server:
    url: str
    pid: int | None
    started: bool
    log: Path


def read_pid(path: Path) -> int | None:
    """The pid in ``path`` if that process is still alive."""
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def ensure_server(settings: Settings, host: str, port: int, wait_s: float = 120.0) -> Server:
    """Reuse a recdistill server already on ``host:port``, or start `recdistill serve` in the background."""
    url = client_url(host, port)
    log, pid_file = settings.home / "serve.log", settings.home / "serve.pid"
    state = probe(url)
    if state == "ours":
        return Server(url, read_pid(pid_file), started=False, log=log)
    if state == "foreign":
        raise QuickstartError(f"port {port}: something that is not recdistill answers at {url}; pick --port")
    settings.home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RECDISTILL_HOME": str(settings.home), "RECDISTILL_HOST": host, "RECDISTILL_PORT": str(port)}
    with log.open("ab") as out:
        # A session of its own: Ctrl-C here (or closing this terminal) leaves the server running.
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE_CODE, "serve"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise QuickstartError(f"`recdistill serve` exited with code {proc.returncode}:\n{tail(log)}")
        if probe(url) == "ours":
            return Server(url, proc.pid, started=True, log=log)
        time.sleep(0.5)
    raise QuickstartError(f"`recdistill serve` did not answer {url}/healthz within {wait_s:.0f} s:\n{tail(log)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


@dataclass
class ProgressView:
    status: str
    phase: str
    epoch: int
    max_epochs: int
    fraction: float
    loss: float | None
    ndcg: float | None


def progress_view(job: dict[str, Any]) -> ProgressView:
    """What the bar shows for a ``GET /jobs/{id}`` body: phase, epoch, latest loss and validation NDCG@10."""
    phase = job.get("phase") or job.get("status") or JobStatus.QUEUED
    loss = ndcg = None
    for entry in reversed(job.get("history") or []):
        if entry.get("phase", phase) != phase:
            continue
        losses = entry.get("losses") or {}
        loss = losses.get("total", next(iter(losses.values()), None))
        ndcg = (entry.get("valid") or {}).get("ndcg@10")
        break
    fraction = min(max(float(job.get("progress") or 0.0), 0.0), 1.0)
    return ProgressView(
        str(job.get("status")), str(phase), int(job.get("epoch") or 0), int(job.get("max_epochs") or 0),
        fraction, loss, ndcg,
    )


def describe(view: ProgressView) -> tuple[str, str]:
    """(bar description, bar postfix) for one view."""
    desc = view.phase if not view.max_epochs else f"{view.phase} {view.epoch}/{view.max_epochs}"
    parts = []
    if view.loss is not None:
        parts.append(f"loss={view.loss:.4f}")
    if view.ndcg is not None:
        parts.append(f"valid ndcg@10={view.ndcg:.4f}")
    return desc, " ".join(parts)


def follow(client: httpx.Client, job_id: str, timeout_s: float, poll_s: float = 1.0) -> dict[str, Any]:
    """Poll the job until it ends, drawing one bar over its overall progress."""
    deadline = time.monotonic() + timeout_s
    with tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}{postfix}]") as bar:
        while True:
            job = call(client, "GET", f"/jobs/{job_id}")
            view = progress_view(job)
            desc, postfix = describe(view)
            bar.set_description_str(desc, refresh=False)
            bar.set_postfix_str(postfix, refresh=False)
            bar.update(round(view.fraction * 100, 1) - bar.n)
            if view.status in FINAL:
                return job
            if time.monotonic() > deadline:
                raise QuickstartError(f"job {job_id} still {view.status} after {timeout_s:.0f} s (see GET /jobs/{job_id})")
            time.sleep(poll_s)


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """One API call; an error reply becomes a QuickstartError quoting the server's detail."""
    response = client.request(method, path, **kwargs)
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:500]
        raise QuickstartError(f"{method} {path} -> HTTP {response.status_code}: {detail}")
    return response.json() if response.content else None


def first_user(path: Path) -> str:
    """The user id on the first data line of an interaction file (a user that surely exists)."""
    with path.open(encoding="utf-8") as fh:
        fh.readline()  # header
        line = fh.readline()
    if not line.strip():
        raise QuickstartError(f"{path}: no data line to pick a user from; pass --user")
    return line.split("\t" if "\t" in line else ",")[0].strip()


def upload_dataset(client: httpx.Client, name: str, path: Path) -> dict[str, Any]:
    """Reuse the dataset uploaded by an earlier quick start, else upload the file."""
    for row in call(client, "GET", "/datasets", params={"limit": 1000})["data"]:
        if row["name"] == name and row["original_filename"] == path.name:
            say(f"Reusing dataset {name} ({row['id']}).")
            return row
    say(f"Uploading {path.name} ({path.stat().st_size / 1e6:.1f} MB) ...")
    with path.open("rb") as fh:
        return call(client, "POST", "/datasets", files={"file": (path.name, fh)}, data={"name": name})


def report_text(client: httpx.Client, model_id: str) -> str:
    """The student's compression report (GET /models/{id}/report) as the shared text (core.report)."""
    return format_report(call(client, "GET", f"/models/{model_id}/report"))


def run(args: argparse.Namespace) -> int:
    """The whole quick start; returns the process exit code."""
    from core import datasets  # the dataset cache (no torch)

    # One INFO line per poll from httpx would tear the progress bar apart.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = get_settings()
    host, port = args.host or settings.host, args.port or settings.port
    server = ensure_server(settings, host, port)
    say(f"{'Started' if server.started else 'Reusing'} the recdistill server at {server.url} (log: {server.log})")
    headers = {"X-API-Key": settings.api_key} if settings.api_key else {}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120.0) as client:
        path = datasets.fetch(args.dataset, progress=say)
        dataset = upload_dataset(client, args.dataset, path)
        say(f"Dataset {dataset['name']}: {dataset['n_users']} users, {dataset['n_items']} items, "
            f"{dataset['n_interactions']} interactions.")
        body = {
            "dataset_id": dataset["id"], "teacher": args.teacher, "student": args.student, "method": args.method,
            "hyperparameters": {
                **HYPERPARAMETERS, "teacher_epochs": args.teacher_epochs, "epochs": args.epochs, **dict(args.set),
            },
            "seed": args.seed,
        }
        job = call(client, "POST", "/jobs", json=body)
        say(f"Job {job['id']}: {args.method} teacher {args.teacher['model']}:{args.teacher['dim']} -> "
            f"student {args.student['model']}:{args.student['dim']} (Ctrl-C stops watching, not the job).")
        job = follow(client, job["id"], args.timeout)
        if job["status"] != JobStatus.SUCCEEDED:
            say(f"Job {job['id']} {job['status']}: {job.get('error') or 'no error message'}")
            return 1
        model_id = job["student_model_id"]
        call(client, "POST", f"/models/{model_id}/activate")
        say(f"\nActivated student {model_id}. Compression report (test split; GET /models/{model_id}/report):\n"
            f"{report_text(client, model_id)}")
        user = args.user or first_user(path)
        rec = call(client, "GET", f"/recommend/{user}", params={"k": args.k})
        say(f"\nTop-{args.k} for user {user} ({rec['source']}):")
        for rank, item in enumerate(rec["items"], start=1):
            say(f"  {rank:2d}. {item['item']}  (score {item['score']:.3f})")
    say(f"\nThe server keeps running at {server.url} (API docs: {server.url}/docs).")
    if server.pid is not None:
        # Started in a session of its own, so its pid is its process group: this stops its local worker too.
        say(f"Server PID {server.pid}; stop it (and its local worker) with: kill -- -{server.pid}")
    else:
        say("It was already running before this quick start; stop it where it was started.")
    return 0


def _handler(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except QuickstartError as exc:
        say(f"quickstart failed: {exc}")
        return 1
    except httpx.HTTPError as exc:
        say(f"quickstart failed: cannot talk to the server: {exc}")
        return 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `quickstart` subcommand."""
    p = subparsers.add_parser(
        "quickstart",
        help="start the local server, distill a student on MovieLens and show recommendations",
        description=__doc__,
    )
    p.add_argument("--dataset", choices=("ml-100k", "ml-1m"), default="ml-100k", help="MovieLens size to fetch")
    p.add_argument("--teacher", type=lambda t: parse_spec(t, "--teacher"), default=DEFAULTS["teacher"],
                   help="teacher MODEL:DIM (default %(default)s)")
    p.add_argument("--student", type=lambda t: parse_spec(t, "--student"), default=DEFAULTS["student"],
                   help="student MODEL:DIM (default %(default)s)")
    p.add_argument("--method", choices=("dcd", "rrd", "none"), default="dcd", help="distillation method")
    p.add_argument("--teacher-epochs", type=_positive("--teacher-epochs"), default=DEFAULTS["teacher_epochs"],
                   help="teacher epochs (default %(default)s)")
    p.add_argument("--epochs", type=_positive("--epochs"), default=DEFAULTS["epochs"], help="student epochs")
    p.add_argument("--set", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="another job hyperparameter (repeatable), e.g. --set lr=0.01 --set patience=3")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of both models (default 0)")
    p.add_argument("--user", help="user to recommend for (default: the file's first user)")
    p.add_argument("--k", type=_positive("--k"), default=10, help="recommendations to show")
    p.add_argument("--host", help="server address (default RECDISTILL_HOST)")
    p.add_argument("--port", type=_positive("--port"), help="server port (default RECDISTILL_PORT)")
    p.add_argument("--timeout", type=_positive("--timeout"), default=3600, help="seconds to wait for the job")
    p.set_defaults(handler=_handler)


def _positive(field: str) -> Any:
    def convert(text: str) -> int:
        if not text.isdigit() or int(text) <= 0:
            raise argparse.ArgumentTypeError(f"{field}: expected a positive integer, got {text!r}")
        return int(text)

    return convert
