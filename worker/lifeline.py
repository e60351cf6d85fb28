"""A local worker never outlives the ``recdistill serve`` that started it, whatever killed the server.

The server (``LocalWorker``) hands its child two things in the environment: its own pid and the read end of a
pipe whose write end only the server holds. In the child:

* on Linux, ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel sends SIGTERM the moment the server dies, even
  by ``kill -9``; Celery's warm shutdown hands the running job back to the queue;
* everywhere, a thread blocked on the pipe: the kernel closes the server's end when it dies, the read returns
  EOF, and the thread sends the same SIGTERM. It also covers the window before ``prctl`` ran;
* ``ORPHAN_GRACE_S`` after either, the thread ends the process, in case the warm shutdown hangs. A job it
  still held is released by the next server (it learns this worker's id from the lock file, see
  ``worker.embedded``).

Nothing here imports torch; stdlib only, so it also runs in a bare child.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

PARENT_PID_ENV = "RECDISTILL_PARENT_PID"
LIFELINE_FD_ENV = "RECDISTILL_LIFELINE_FD"
NO_PDEATHSIG_ENV = "RECDISTILL_NO_PDEATHSIG"  # tests: exercise the portable pipe path alone
# Seconds an orphaned worker may spend in its warm shutdown (a job stops within a few batches) before it
# exits hard; RECDISTILL_LOCAL_WORKER_WAIT's default leaves room for it.
ORPHAN_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1

_started = False


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the Linux kernel to send ``sig`` to this process when its parent dies; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _orphaned(parent_pid: int, how: str, grace_s: float) -> None:
    log.warning("parent server (pid %d) is gone (%s): shutting the local worker down", parent_pid, how)
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # Celery: warm shutdown (a second SIGTERM changes nothing)
    except OSError:
        pass
    time.sleep(grace_s)
    log.error("local worker still running %.0f s after its server died: exiting now", grace_s)
    logging.shutdown()
    os._exit(1)


def _watch_pipe(fd: int, parent_pid: int, grace_s: float) -> None:
    try:
        while os.read(fd, 1):  # the server never writes; anything but EOF is ignored
            pass
    except OSError:
        pass
    _orphaned(parent_pid, "lifeline closed", grace_s)


def _watch_ppid(parent_pid: int, grace_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    _orphaned(parent_pid, "re-parented", grace_s)


def watch_parent(grace_s: float = ORPHAN_GRACE_S) -> bool:
    """Tie this process's life to the server named in the environment (no-op without it; idempotent).

    The variables are removed so that nothing this process starts inherits them. Returns True when a watch
    was installed.
    """
    global _started
    raw_pid, raw_fd = os.environ.pop(PARENT_PID_ENV, None), os.environ.pop(LIFELINE_FD_ENV, None)
    if _started or raw_pid is None:
        return False
    _started = True
    parent_pid = int(raw_pid)
    if not os.environ.pop(NO_PDEATHSIG_ENV, None):
        set_parent_death_signal(signal.SIGTERM)
    if raw_fd is not None:
        target, args = _watch_pipe, (int(raw_fd), parent_pid, grace_s)
    else:
        target, args = _watch_ppid, (parent_pid, grace_s)  # type: ignore[assignment]
    # Also covers a server that died before prctl ran (then no signal comes): the pipe is already at EOF,
    # the parent pid already changed.
    threading.Thread(target=target, args=args, name="recdistill-lifeline", daemon=True).start()
    return True
