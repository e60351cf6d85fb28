"""``LocalWorker``'s watchdog: a restart racing with ``stop()`` must not leave a worker process behind."""

from __future__ import annotations

import signal
import threading

import pytest

from core.settings import Settings
from worker.embedded import LocalWorker


class FakeProc:
    """Stands in for ``subprocess.Popen``: alive until it is signalled or killed."""

    def __init__(self, pid: int, alive: bool) -> None:
        self.pid, self.alive, self.signals = pid, alive, list[int]()

    @property
    def returncode(self) -> int | None:
        return None if self.alive else -15

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.alive = False

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def kill(self) -> None:
        self.alive = False


def test_stop_during_a_restart_stops_the_restarted_worker(
    embedded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawning, release = threading.Event(), threading.Event()
    spawned: list[FakeProc] = []

    def fake_spawn() -> FakeProc:
        if spawned:  # the watchdog's restart: stop() arrives while it is under way
            spawning.set()
            release.wait(5)
        proc = FakeProc(len(spawned) + 1, alive=bool(spawned))  # the first one dies at once
        spawned.append(proc)
        return proc

    worker = LocalWorker(embedded, restart_delay=0.0)
    monkeypatch.setattr(worker, "_spawn", fake_spawn)
    worker.start()
    assert spawning.wait(5), "the watchdog never restarted the dead worker"
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    stopper.join(0.3)  # stop() is now waiting for the restart to finish
    release.set()
    stopper.join(5)
    assert worker._watch is not None
    worker._watch.join(5)
    assert not stopper.is_alive() and not worker._watch.is_alive()
    assert len(spawned) == 2  # no further restart after stop()
    assert spawned[1].signals == [signal.SIGTERM], "the restarted worker was left running"
