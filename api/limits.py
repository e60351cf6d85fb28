"""What one request body may cost the server: a size limit and a stall timeout, for every route.

FastAPI reads a JSON body whole before validating it, so without a limit one POST could fill the API
process's memory; and a client that sends its headers and then nothing would hold a connection (and an
upload's open file) for ever. Both are enforced on the ASGI ``receive`` stream, so they cover every route
(uploads included) in one place:

- a declared ``Content-Length`` above the limit is answered 413 before any byte is read;
- a body that grows past it (chunked, or a lying header) raises ``PayloadTooLarge`` where it is read;
- a body read that waits longer than ``RECDISTILL_BODY_TIMEOUT`` for the next bytes raises
  ``RequestTimeout`` (408, connection closed).

The upload route gets the upload limit plus room for its multipart envelope; ``api/upload.py`` still
counts the file part's own bytes against ``RECDISTILL_MAX_UPLOAD_MB``.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PayloadTooLarge, RequestTimeout
from core.settings import Settings

# Multipart headers and form fields around an upload's file part (api/upload.py bounds the fields).
UPLOAD_ENVELOPE_BYTES = 4 * 1024 * 1024


def body_limit(settings: Settings, method: str, path: str) -> int:
    """The most body bytes a request to ``method path`` may send."""
    if method == "POST" and path.rstrip("/") == "/datasets":
        return settings.max_upload_mb * 1024 * 1024 + UPLOAD_ENVELOPE_BYTES
    return settings.max_body_kb * 1024


def _describe(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"


class BodyLimitMiddleware:
    """Bounds each request body's size and the time between its chunks (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(self.settings, scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, 413, f"request body is larger than the limit of {_describe(limit)}",
                          "payload_too_large")
            return
        timeout = self.settings.body_timeout_s
        received = 0
        done = False

        async def guarded_receive() -> Message:
            nonlocal received, done
            if done:  # the body is complete: later reads only wait for a disconnect, which may take any time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                raise RequestTimeout(
                    f"the request body stalled: no bytes for {timeout:g} s (RECDISTILL_BODY_TIMEOUT)",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request body is larger than the limit of {_describe(limit)}",
                                          headers={"Connection": "close"})
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        await self.app(scope, guarded_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _refuse(send: Send, status: int, detail: str, code: str) -> None:
    body = orjson.dumps({"detail": detail, "code": code})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
