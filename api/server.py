"""Running the API: the one place that starts uvicorn, for ``recdistill serve`` and the API container.

uvicorn's fast HTTP parser (httptools) puts no limit on a request's head: a 50 MB header line was accepted
and held in memory until the request ended, so a handful of connections could exhaust the process.
``BoundedHttpToolsProtocol`` answers 431 and closes the connection once a request's line and headers pass
``MAX_HEAD_BYTES`` (the h11 fallback has the same bound through its public ``h11_max_incomplete_event_size``).
Bodies are bounded per route by ``api.limits``.

With more than one process (``--workers``), on Linux each API process listens on a socket of its own bound to
the same port with SO_REUSEPORT, so the kernel spreads new connections over the processes. uvicorn's own
``--workers`` shares one listening socket: whichever process wakes first accepts every connection waiting, so
keep-alive connections opened together (a load balancer's pool, a client's) all landed on one of four
processes (issue 14's serving bench, twice at 8 connections) and the other three stayed idle.

    python -m api.server --host 0.0.0.0 --port 8000 --proxy-headers    # WEB_CONCURRENCY processes
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from typing import Any

import uvicorn

# Request line + headers; browsers and proxies keep to 8-16 KiB (nginx's default is 4 x 8 KiB).
MAX_HEAD_BYTES = 64 * 1024
LINGER_S = 1.0
_HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                   b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_HEAD_BODY = (b'{"detail":"request line and headers are larger than %d KiB","code":"headers_too_large"}'
              % (MAX_HEAD_BYTES // 1024))


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: uvicorn's h11 protocol, bounded through its config
    HttpToolsProtocol = None

if HttpToolsProtocol is not None:
    # At module level, not in a function: with --workers > 1 each API process is spawned and receives the
    # protocol class by pickling, which a class defined inside a function cannot be.
    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """Counts the bytes fed to the parser while a request's head is incomplete; past MAX_HEAD_BYTES the
        connection gets a 431 and is closed (the parser buffers a header whole before handing it over, so
        the count has to happen here, on the raw bytes)."""

        _head_bytes = 0
        _in_head = True
        _refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # drain what the client is still sending until the close below
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)  # may complete the head (on_headers_complete) with this chunk
            if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._refused = True
                self.transport.write(_HEAD_TOO_LARGE % (len(_HEAD_BODY), _HEAD_BODY))
                # Closing with unread bytes would reset the connection and could lose the answer, so keep
                # reading (and dropping) for a moment first.
                self.loop.call_later(LINGER_S, self.transport.close)

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0  # a keep-alive connection's next request starts


def _http_protocol() -> Any:
    """The bounded httptools protocol when httptools is installed, else "h11" (bounded by its config)."""
    return "h11" if HttpToolsProtocol is None else BoundedHttpToolsProtocol


def _options(log_level: str, proxy_headers: bool) -> dict[str, Any]:
    return {"log_level": log_level, "proxy_headers": proxy_headers, "http": _http_protocol(),
            "h11_max_incomplete_event_size": MAX_HEAD_BYTES}


def run(host: str, port: int, *, workers: int = 1, log_level: str = "info", proxy_headers: bool = False) -> None:
    """Serve ``api.main:app`` (settings from the environment) until interrupted."""
    if workers > 1 and sys.platform.startswith("linux"):
        Supervisor(host, port, workers, _options(log_level, proxy_headers)).run()
        return
    # One process; or elsewhere than Linux, where SO_REUSEPORT does not balance (macOS hands every connection
    # to the last socket bound): uvicorn's shared socket.
    uvicorn.run("api.main:app", host=host, port=port, workers=workers, **_options(log_level, proxy_headers))


def _tcp_socket(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)  # as uvicorn


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT: every process of this server binds its own."""
    sock = _tcp_socket(host)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve_process(host: str, port: int, options: dict[str, Any]) -> None:
    """One API process: its own listening socket, then uvicorn until SIGTERM or SIGINT."""
    config = uvicorn.Config("api.main:app", host=host, port=port, **options)
    uvicorn.Server(config).run(sockets=[reuseport_socket(host, port)])


class Supervisor:
    """Runs ``workers`` API processes, each listening on its own SO_REUSEPORT socket; restarts one that dies
    (a crash, the kernel's OOM killer) and stops them all on SIGTERM or SIGINT.

    The parent binds the port first, without listening, so that the port stays reserved to this server while
    processes restart (a socket that does not listen receives no connections). Before that it binds once
    without SO_REUSEPORT: SO_REUSEPORT would let a second server of the same user share a port that is
    already serving, and split the clients between the two; this way a port in use fails at once."""

    # A process that exits with an error this soon after its start failed to start (bad settings, a broken
    # import, a database it cannot reach): starting it again would fail again, so the server stops with an
    # error instead of restarting it in a loop. One killed by a signal (negative exit code) is restarted.
    START_GRACE_S = 10.0
    STOP_TIMEOUT_S = 30.0

    def __init__(self, host: str, port: int, workers: int, options: dict[str, Any]) -> None:
        self.host, self.workers, self.options = host, workers, options
        self.log = logging.getLogger("uvicorn.error")
        uvicorn.Config("api.main:app", log_level=options["log_level"]).configure_logging()
        with _tcp_socket(host) as plain:
            plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT does not block
            plain.bind((host, port))
            port = plain.getsockname()[1]  # port 0: the one the OS chose, for every process
        self.reserved = reuseport_socket(host, port)
        self.port = port
        self.context = multiprocessing.get_context("spawn")  # a fresh interpreter: no state forked mid-request
        self.processes: list[tuple[Any, float]] = []
        self.stopping = False

    def _start(self) -> tuple[Any, float]:
        proc = self.context.Process(target=serve_process, args=(self.host, self.port, self.options),
                                    name="recdistill-api")
        proc.start()
        return proc, time.monotonic()

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def run(self) -> None:
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        failed = False
        try:
            self.processes = [self._start() for _ in range(self.workers)]
            self.log.info("%d API processes on %s:%d, one listening socket each (SO_REUSEPORT)",
                          self.workers, self.host, self.port)
            while not self.stopping:
                time.sleep(0.5)  # a signal ends the sleep early
                for i, (proc, started) in enumerate(self.processes):
                    if self.stopping or proc.exitcode is None:
                        continue
                    if time.monotonic() - started < self.START_GRACE_S and proc.exitcode > 0:
                        self.log.error("API process %d exited with %s while starting; stopping the server",
                                       proc.pid, proc.exitcode)
                        self.stopping = failed = True
                        break
                    self.log.warning("API process %d exited with %s; starting another", proc.pid, proc.exitcode)
                    self.processes[i] = self._start()
        finally:
            self._shutdown()
            self.reserved.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if failed:
            raise SystemExit(1)

    def _shutdown(self) -> None:
        """SIGTERM to every process (uvicorn finishes the requests in flight), then SIGKILL to any still running
        after STOP_TIMEOUT_S."""
        for proc, _ in self.processes:
            if proc.exitcode is None:
                proc.terminate()
        deadline = time.monotonic() + self.STOP_TIMEOUT_S
        for proc, _ in self.processes:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                self.log.warning("API process %d did not stop in %.0f s; killing it", proc.pid, self.STOP_TIMEOUT_S)
                proc.kill()
                proc.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api.server", description="Serve the recdistill API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=os.environ.get("WEB_CONCURRENCY", "1"),
                        help="API processes (default: WEB_CONCURRENCY or 1); each loads the active bundle")
    parser.add_argument("--proxy-headers", action="store_true",
                        help="trust X-Forwarded-For/Proto from the addresses in FORWARDED_ALLOW_IPS")
    parser.add_argument("--log-level", default=os.environ.get("RECDISTILL_LOG_LEVEL", "info").lower())
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    try:
        run(args.host, args.port, workers=args.workers, log_level=args.log_level, proxy_headers=args.proxy_headers)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise SystemExit(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None


if __name__ == "__main__":
    main()
