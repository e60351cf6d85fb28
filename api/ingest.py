"""Parse uploads off the API process: at most N ``python -m core.ingest`` children at once, each time-limited.

The API only ever holds the child's one-line JSON summary, so its memory does not grow with the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy.orm import Session, sessionmaker

import core
from api.errors import APIError, InvalidInput, PayloadTooLarge, ServiceUnavailable
from core.ingest import IngestRequest, sweep_upload_leftovers
from core.settings import Settings

logger = logging.getLogger(__name__)

# The folder that holds the ``core`` package: the child imports the same code as this process.
_CODE_ROOT = str(Path(core.__file__).resolve().parents[1])
# One thread per library pool is plenty for a parse.
_CHILD_THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
_POLL_S = 0.1


def _rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB from /proc (0 where there is no /proc: no memory limit there)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class IngestRunner:
    """Runs :mod:`core.ingest` children for one app, ``settings.ingest_concurrency`` at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._slots: anyio.Semaphore | None = None

    def _child_env(self) -> dict[str, str]:
        env = {**os.environ, **_CHILD_THREADS}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_CODE_ROOT, env.get("PYTHONPATH", "")) if p)
        return env

    def _run_child(self, req: IngestRequest) -> dict[str, Any]:
        """Blocking: run one child (in a worker thread), watch its time and memory, return its JSON answer."""
        s = self.settings
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.ingest"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=self._child_env(), cwd=_CODE_ROOT,
        )
        data: bytes | None = json.dumps(dataclasses.asdict(req)).encode()
        deadline = time.monotonic() + s.ingest_timeout_s
        stopped = ""
        while True:
            try:
                out, err = proc.communicate(input=data, timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                data = None  # already sent; communicate() keeps what was read so far
            # RSS rather than RLIMIT_AS: an address-space limit makes pandas fail with misleading parse errors.
            if _rss_mb(proc.pid) > s.ingest_memory_mb:
                stopped = "memory"
            elif time.monotonic() > deadline:
                stopped = "time"
            if stopped:
                proc.kill()
                proc.communicate()
                break
        if stopped == "time":
            return {"ok": False, "status": 413, "code": "ingest_timeout",
                    "detail": f"file: parsing took longer than the limit of {s.ingest_timeout_s:g} s "
                              "(RECDISTILL_INGEST_TIMEOUT)"}
        if stopped == "memory" or proc.returncode == -signal.SIGKILL:  # ours, or the kernel's OOM killer
            return {"ok": False, "status": 413, "code": "ingest_memory",
                    "detail": "file: parsing it needs more memory than allowed"}
        lines = out.decode("utf-8", "replace").strip().splitlines()
        if proc.returncode != 0 or not lines:
            logger.error("ingest child exited with %s: %s", proc.returncode, err.decode("utf-8", "replace")[-4000:])
            return {"ok": False, "status": 422, "code": "ingest_failed",
                    "detail": f"file: could not be parsed (parser exited with status {proc.returncode})"}
        answer: dict[str, Any] = json.loads(lines[-1])
        return answer

    async def summarize(self, req: IngestRequest, shown_name: str) -> dict[str, Any]:
        """The data set's counts, or the refusal as an :class:`APIError` (413/422; 503 when all slots stay busy)."""
        s = self.settings
        if self._slots is None:
            self._slots = anyio.Semaphore(s.ingest_concurrency)
        with anyio.move_on_after(s.ingest_wait_s) as waited:
            await self._slots.acquire()
        if waited.cancelled_caught:
            raise ServiceUnavailable(
                f"{s.ingest_concurrency} upload(s) are being parsed (RECDISTILL_INGEST_CONCURRENCY); retry later",
                code="ingest_busy", headers={"Retry-After": str(math.ceil(s.ingest_wait_s))},
            )
        try:
            # Not cancellable: a client that leaves still waits for (at most ingest_timeout_s of) its child,
            # so the slot is never released while the child runs.
            answer = await anyio.to_thread.run_sync(self._run_child, req)
        finally:
            self._slots.release()
        logger.info("ingest of %s: %s", shown_name, answer)
        if answer.get("ok"):
            return answer
        raise _refusal(answer, Path(req.path).name, shown_name, s)


def _refusal(answer: dict[str, Any], stored: str, shown: str, s: Settings) -> APIError:
    code = str(answer.get("code", "invalid_data"))
    # Messages name our stored file; show the client's name instead.
    detail = str(answer.get("detail", "invalid file")).replace(stored, shown)
    if code == "decompressed_too_large":
        detail = (f"file: {shown!r} is larger than the limit of {s.max_upload_decompressed_mb} MiB once "
                  "decompressed (RECDISTILL_MAX_UPLOAD_DECOMPRESSED_MB)")
    elif code == "ingest_memory":
        detail += f" (limit {s.ingest_memory_mb} MiB, RECDISTILL_INGEST_MEMORY_MB)"
    if answer.get("status") == 413:
        return PayloadTooLarge(detail, code=code)
    return InvalidInput(detail, code=code)


def cleanup_upload_leftovers(settings: Settings, sessions: sessionmaker[Session]) -> list[str]:
    """Start-up sweep of folders a crash left mid-upload; never raises (a down database only logs)."""
    # A folder is only safe to remove once no live upload could still be writing or parsing it.
    min_age = max(settings.upload_leftover_age_s, settings.ingest_wait_s + settings.ingest_timeout_s + 60)
    try:
        return sweep_upload_leftovers(settings.artifact_dir, sessions, min_age)
    except Exception:
        logger.exception("could not sweep upload leftovers")
        return []
