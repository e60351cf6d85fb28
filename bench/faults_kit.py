"""Helpers of ``bench/faults.py``: the processes it starts (serve, workers) and always stops, a thread-safe
request recorder (status + code, latency per endpoint), process RSS from /proc, synthetic interaction files.

Only the standard library and httpx: the script drives the service from outside, as a client and an
operator would, and never imports the service's code.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


# ----------------------------------------------------------------------------------------------- /proc
def rss_mb(pid: int | None) -> float | None:
    """Resident set size of ``pid`` in MiB (None when it is gone)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def alive(pid: int | None) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (by the parent field of /proc/<child>/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def is_worker(pid: int) -> bool:
    """A job worker process: ``celery ... worker`` or ``recdistill worker`` (however serve starts it)."""
    cmd = cmdline(pid)
    return "celery" in cmd or " worker" in cmd


def celery_children(pid: int) -> list[int]:
    """The live local workers among the descendants of a ``recdistill serve`` process."""
    found, todo = [], children(pid)
    while todo:
        child = todo.pop()
        if alive(child) and is_worker(child):
            found.append(child)  # its own children (a prefork pool) belong to it: one worker
        else:
            todo.extend(children(child))
    return sorted(found)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def checkouts(baseline: Path | None) -> dict[str, Path]:
    """The code an A/B benchmark measures: this checkout as "current", and ``baseline`` (an earlier commit's
    checkout) when given."""
    return {"current": ROOT, **({"baseline": baseline.resolve()} if baseline else {})}


def measure_each(codes: dict[str, Path], measure: Callable[[str, Path], dict[str, Any]]) -> list[dict[str, Any]]:
    """``measure(name, checkout)`` for each of ``codes`` in turn, each result printed as it comes and tagged."""
    runs = []
    for name, code in codes.items():
        runs.append({"code": name, **measure(name, code)})
        print(json.dumps(runs[-1]), flush=True)  # noqa: T201
    return runs


def git_commit(checkout: Path = ROOT) -> str:
    """HEAD of ``checkout`` (this one by default), with "-dirty" when tracked files differ from it."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


# ----------------------------------------------------------------------------------------------- processes
class Processes:
    """Every process the bench starts; ``close()`` stops them all (SIGTERM, then SIGKILL), orphans included.

    Each process leads its own session, so a worker it spawned can be found and stopped by its group even
    after its parent was killed with SIGKILL.
    """

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.extra_pids: set[int] = set()  # workers seen (spawned by serve), checked by cmdline before a kill
        self._lock = threading.Lock()

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            cwd=ROOT,
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        with self._lock:
            self.procs.append(proc)
        return proc

    def remember(self, pids: list[int]) -> None:
        with self._lock:
            self.extra_pids.update(pids)

    def kill9(self, pid: int) -> None:
        """``kill -9`` of one process: its children are left alone, as with a real crash."""
        os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            if proc.pid == pid:
                proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # Anything left in the groups we created (e.g. a worker orphaned by a kill -9 of serve).
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in self.extra_pids:
            if alive(pid) and is_worker(pid):
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------- requests
def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


class Recorder:
    """Outcomes of every request of one phase: counts, non-2xx by ``status code`` or transport error, and
    latencies per endpoint (milliseconds)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.served: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()  # "endpoint | cause"
        self.total = 0

    def add(self, endpoint: str, ms: float, cause: str | None) -> None:
        with self._lock:
            self.total += 1
            self.latency[endpoint].append(ms)
            if cause is None:
                self.served[endpoint] += 1
            else:
                self.failed[f"{endpoint} | {cause}"] += 1

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.total,
                "served_2xx": sum(self.served.values()),
                "non_2xx_or_error": sum(self.failed.values()),
                "non_2xx_by_cause": dict(sorted(self.failed.items())),
                "latency_ms": {
                    ep: {
                        "n": len(v),
                        "p50": _round(percentile(v, 50)),
                        "p99": _round(percentile(v, 99)),
                        "max": _round(max(v)),
                    }
                    for ep, v in sorted(self.latency.items())
                },
            }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def cause_of(resp: httpx.Response) -> str | None:
    """None for a 2xx; else ``"<status> <code>"`` with the JSON body's ``code`` (or ``non-json``)."""
    if 200 <= resp.status_code < 300:
        return None
    try:
        body = resp.json()
        code = body.get("code", "no-code") if isinstance(body, dict) else "no-code"
    except ValueError:
        code = "non-json"
    return f"{resp.status_code} {code}"


def call(
    http: httpx.Client, rec: Recorder | None, endpoint: str, method: str, url: str, **kw: Any
) -> httpx.Response | None:
    """One request, recorded; transport errors are recorded and answered with None."""
    t0 = time.perf_counter()
    try:
        resp = http.request(method, url, **kw)
    except httpx.HTTPError as exc:
        if rec is not None:
            rec.add(endpoint, (time.perf_counter() - t0) * 1000, f"transport {type(exc).__name__}")
        return None
    if rec is not None:
        rec.add(endpoint, (time.perf_counter() - t0) * 1000, cause_of(resp))
    return resp


class Pacer:
    """At most ``rate`` events per second across the threads sharing it (a slot every 1/rate seconds)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event) -> bool:
        """Sleep until the next slot; False when ``stop`` was set meanwhile."""
        with self._lock:
            slot = max(self._next, time.monotonic())
            self._next = slot + self.interval
        return not stop.wait(max(0.0, slot - time.monotonic()))


# ----------------------------------------------------------------------------------------------- data
def interactions_csv(n_users: int, n_items: int, per_user: int, seed: int = 0, prefix: str = "u") -> bytes:
    """Two taste groups over halves of the catalogue (a signal a tiny job learns), as ``user,item`` CSV."""
    rng = random.Random(seed)
    rows = ["user,item"]
    half = n_items // 2
    for u in range(n_users):
        base = 0 if u % 2 == 0 else half
        rows.extend(f"{prefix}{u},i{base + i}" for i in rng.sample(range(half), min(per_user, half)))
    return ("\n".join(rows) + "\n").encode()


def multipart_chunks(
    boundary: str, fields: dict[str, str], filename: str, data: bytes, chunk: int, sent: threading.Event | None,
    delay: float, half_at: int,
) -> Iterator[bytes]:
    """A ``multipart/form-data`` body yielded in pieces (slowly, with ``delay`` between file chunks); sets
    ``sent`` once ``half_at`` file bytes are out, so a test can act mid-upload."""
    for key, value in fields.items():
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]
        if sent is not None and start + chunk >= half_at:
            sent.set()
        if delay:
            time.sleep(delay)
    yield f"\r\n--{boundary}--\r\n".encode()


def dump(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
