"""Streaming multipart reader: form fields in memory, the one file part written to disk chunk by chunk.

Unlike ``request.form()`` it never spools the upload elsewhere first, and stops at the size limit (413).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio
from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import APIError, InvalidInput, PayloadTooLarge

logger = logging.getLogger(__name__)

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32
FILE_FIELD = "file"


@dataclass
class Upload:
    """What arrived: the text fields, the file part's client-side name, and its size on disk."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    size: int = 0


class _Collector:
    """python-multipart callbacks; file bytes are queued and written by the async loop."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.upload = Upload()
        self.pending: list[bytes] = []
        self._name = b""
        self._value = b""
        self._disposition = b""
        self._field: str | None = None
        self._is_file = False
        self._buf = bytearray()
        self.complete = False  # the closing boundary was seen

    def on_end(self) -> None:
        self.complete = True

    def on_part_begin(self) -> None:
        self._disposition, self._field, self._is_file, self._buf = b"", None, False, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._name.lower() == b"content-disposition":
            self._disposition = self._value
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidInput("multipart part without a name in Content-Disposition", code="malformed_multipart")
        self._field = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            if self._field != FILE_FIELD or self.upload.filename is not None:
                raise InvalidInput(f"expected exactly one file part named {FILE_FIELD!r}, got {self._field!r}")
            self._is_file = True
            self.upload.filename = options[b"filename"].decode("utf-8", "replace")
        elif len(self.upload.fields) >= MAX_FIELDS:
            raise InvalidInput(f"too many form fields (at most {MAX_FIELDS})")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.upload.size += end - start
            if self.upload.size > self.max_bytes:
                raise PayloadTooLarge(f"file is larger than the limit of {self.max_bytes // (1024 * 1024)} MiB")
            self.pending.append(data[start:end])
        else:
            self._buf += data[start:end]
            if len(self._buf) > MAX_FIELD_BYTES:
                raise InvalidInput(f"form field {self._field!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if not self._is_file and self._field is not None:
            self.upload.fields[self._field] = self._buf.decode("utf-8", "replace")


async def receive_upload(request: Request, dest: Path, max_bytes: int) -> Upload:
    """Parse the multipart body of ``request``, writing its ``file`` part to ``dest``.

    Raises ``PayloadTooLarge`` as soon as the file passes ``max_bytes`` and ``InvalidInput`` on malformed
    bodies; the caller deletes ``dest`` on any error.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise InvalidInput("expected a multipart/form-data body with a 'file' part", code="malformed_multipart")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + 1024 * 1024:
        raise PayloadTooLarge(f"request is larger than the limit of {max_bytes // (1024 * 1024)} MiB")
    collector = _Collector(max_bytes)
    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": collector.on_part_begin,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_headers_finished": collector.on_headers_finished,
            "on_end": collector.on_end,
        },
    )
    with dest.open("wb") as out:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                if collector.pending:
                    await _flush(out, collector.pending)
            parser.finalize()
        except APIError:
            raise
        except Exception as exc:  # the parser's own errors: a malformed body
            raise InvalidInput(f"malformed multipart body: {exc}", code="malformed_multipart") from exc
        if collector.pending:
            await _flush(out, collector.pending)
    if not collector.complete:
        # The parser's finalize() does not check this: a body cut short must not pass as a shorter file.
        raise InvalidInput("malformed multipart body: it ends before its closing boundary", code="malformed_multipart")
    if collector.upload.filename is None:
        raise InvalidInput(f"missing the {FILE_FIELD!r} file part", code="missing_file")
    return collector.upload


async def _flush(out: BinaryIO, pending: list[bytes]) -> None:
    data = b"".join(pending)
    pending.clear()
    await anyio.to_thread.run_sync(out.write, data)
