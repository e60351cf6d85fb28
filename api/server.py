"""Running the API: the one place that starts uvicorn, for ``recdistill serve`` and the API container.

uvicorn's fast HTTP parser (httptools) puts no limit on a request's head: a 50 MB header line was accepted
and held in memory until the request ended, so a handful of connections could exhaust the process.
``BoundedHttpToolsProtocol`` answers 431 and closes the connection once a request's line and headers pass
``MAX_HEAD_BYTES`` (the h11 fallback has the same bound through its public ``h11_max_incomplete_event_size``).
Bodies are bounded per route by ``api.limits``.

    python -m api.server --host 0.0.0.0 --port 8000 --proxy-headers    # WEB_CONCURRENCY processes
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import uvicorn

# Request line + headers; browsers and proxies keep to 8-16 KiB (nginx's default is 4 x 8 KiB).
MAX_HEAD_BYTES = 64 * 1024
LINGER_S = 1.0
_HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                   b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_HEAD_BODY = (b'{"detail":"request line and headers are larger than %d KiB","code":"headers_too_large"}'
              % (MAX_HEAD_BYTES // 1024))


def _http_protocol() -> Any:
    """The bounded httptools protocol when httptools is installed, else "h11" (bounded by its config)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "h11"

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

    return BoundedHttpToolsProtocol


def run(host: str, port: int, *, workers: int = 1, log_level: str = "info", proxy_headers: bool = False) -> None:
    """Serve ``api.main:app`` (settings from the environment) until interrupted."""
    uvicorn.run(
        "api.main:app",
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        proxy_headers=proxy_headers,
        http=_http_protocol(),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api.server", description="Serve the recdistill API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")),
                        help="API processes (default: WEB_CONCURRENCY or 1); each loads the active bundle")
    parser.add_argument("--proxy-headers", action="store_true",
                        help="trust X-Forwarded-For/Proto from the addresses in FORWARDED_ALLOW_IPS")
    parser.add_argument("--log-level", default=os.environ.get("RECDISTILL_LOG_LEVEL", "info").lower())
    args = parser.parse_args(argv)
    run(args.host, args.port, workers=args.workers, log_level=args.log_level, proxy_headers=args.proxy_headers)


if __name__ == "__main__":
    main()
