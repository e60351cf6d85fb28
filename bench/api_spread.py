"""How the connections a client opens together spread over an API server's processes: ``python -m api.server
--workers N`` (a listening socket per process, SO_REUSEPORT) against uvicorn's own ``--workers N`` (one socket
shared by the processes), alternating, on a fresh migrated home (no model: the requests are /healthz).

Each trial opens C connections one after another (as a client's pool or a load balancer's does), sends one
request on each, and reads which process holds the server side of each connection (/proc/net/tcp and the
processes' file descriptors). Reported per mode, over every trial: how many of the N processes got at least
one connection and the largest number one process got; then a closed-loop ``wrk`` run on C keep-alive
connections (when wrk is installed) and the CPU seconds each process spent during it.

    .venv/bin/python bench/api_spread.py --workers 4 --out bench/results/api-spread-4.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faults_kit import LOOPBACK, ROOT, children, free_port, git_commit  # noqa: E402
from serve_throughput import cpu_seconds  # noqa: E402

COMMANDS = {
    "per-process": ["-m", "api.server"],
    "shared": ["-m", "uvicorn", "api.main:app", "--no-access-log"],
}


def api_processes(server: int) -> list[int]:
    """The API processes of a server: its children, multiprocessing's resource tracker left out."""
    out = []
    for pid in children(server):
        try:
            if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            continue  # ended while listed
    return sorted(out)


def _tcp_rows() -> list[list[str]]:
    return [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]


def _port(address: str) -> int:
    return int(address.split(":")[1], 16)


def listening(port: int) -> int:
    """Sockets listening on ``port`` (state 0A): one per API process with api.server, one in all with uvicorn's."""
    return sum(1 for r in _tcp_rows() if _port(r[1]) == port and r[3] == "0A")


def _sockets_of(pid: int) -> set[str]:
    out = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return out
    for fd in fds:
        try:
            out.add(os.readlink(fd))
        except OSError:
            continue
    return out


def connection_owners(port: int, client_ports: list[int], pids: list[int]) -> list[int]:
    """For each loopback client port, the pid holding the server side of its connection (0: none found)."""
    inode_of = {_port(r[2]): f"socket:[{r[9]}]" for r in _tcp_rows() if _port(r[1]) == port and r[3] != "0A"}
    pid_of = {link: pid for pid in pids for link in _sockets_of(pid)}
    return [pid_of.get(inode_of.get(c, ""), 0) for c in client_ports]


def ready(port: int, server: subprocess.Popen[bytes], workers: int, timeout: float = 120) -> list[int]:
    """Wait until ``workers`` API processes each hold a listening socket on ``port`` and /healthz answers."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        pids = api_processes(server.pid) if workers > 1 else [server.pid]
        listen = {f"socket:[{r[9]}]" for r in _tcp_rows() if _port(r[1]) == port and r[3] == "0A"}
        if len(pids) == workers and all(_sockets_of(p) & listen for p in pids):
            try:
                if httpx.get(f"http://{LOOPBACK}:{port}/healthz", timeout=2).status_code == 200:
                    return pids
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start")


def trial(port: int, connections: int, pids: list[int]) -> list[int]:
    """Open ``connections`` together, one request on each; the pid that accepted each."""
    socks = [socket.create_connection((LOOPBACK, port), timeout=10) for _ in range(connections)]
    try:
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
        for sock in socks:
            if not sock.recv(65536).startswith(b"HTTP/1.1 200"):
                raise RuntimeError("/healthz did not answer 200")
        return connection_owners(port, [s.getsockname()[1] for s in socks], pids)
    finally:
        for sock in socks:
            sock.close()


def wrk_run(port: int, connections: int, seconds: int, pids: list[int]) -> dict[str, Any]:
    before = [float(cpu_seconds(p).sum()) for p in pids]
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://{LOOPBACK}:{port}/healthz"],
                         capture_output=True, text=True, check=True).stdout
    rate = next(float(line.split()[1]) for line in out.splitlines() if line.startswith("Requests/sec"))
    return {"requests_per_s": rate,
            "cpu_s_per_process": [round(float(cpu_seconds(p).sum()) - b, 2) for p, b in zip(pids, before, strict=True)]}


def run_mode(mode: str, args: argparse.Namespace, home: Path) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "RECDISTILL_HOME": str(home), "PYTHONPATH": str(ROOT), "RECDISTILL_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen([sys.executable, *COMMANDS[mode], "--host", LOOPBACK, "--port", str(port),
                               "--workers", str(args.workers), "--log-level", "warning"], cwd=ROOT, env=env)
    try:
        pids = ready(port, server, args.workers)
        time.sleep(args.settle)  # every process past its start-up, in both modes alike
        used, largest = [], []
        for _ in range(args.trials):
            owners = Counter(trial(port, args.connections, pids))
            if 0 in owners:
                raise RuntimeError("a connection's process was not found")
            used.append(len(owners))
            largest.append(max(owners.values()))
            time.sleep(0.05)
        out: dict[str, Any] = {"mode": mode, "trials": args.trials,
                               "processes_used": dict(sorted(Counter(used).items())),
                               "largest_on_one_process": dict(sorted(Counter(largest).items())),
                               "mean_processes_used": round(sum(used) / len(used), 2)}
        if shutil.which("wrk"):
            out["wrk"] = wrk_run(port, args.connections, args.wrk_seconds, pids)
        return out
    finally:
        server.terminate()
        server.wait(timeout=60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--trials", type=int, default=50, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=2, help="the two modes alternate this many times")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after every process listens")
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="recdistill-spread-"))
    try:
        home = work / "home"
        subprocess.run([sys.executable, "-m", "cli", "migrate"], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "RECDISTILL_HOME": str(home), "PYTHONPATH": str(ROOT)})
        runs = [run_mode(mode, args, home) for _ in range(args.rounds) for mode in COMMANDS]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": "python bench/api_spread.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": git_commit(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
