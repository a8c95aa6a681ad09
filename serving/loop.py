"""The service's background threads (worker, forwarder, action runner): one daemon thread each, woken early
by ``wake``, stopped by ``stop``."""

from __future__ import annotations

import threading
import time

from serving.store import JobStore

IDLE_WAIT_S = 5.0  # longest sleep of an idle loop (a wake or a due row ends it sooner)
MIN_WAIT_S = 0.05


class Loop:
    """A daemon thread running :meth:`_run` until :meth:`stop`; ``wake`` interrupts its waits."""

    def __init__(self, name: str) -> None:
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _sleep_until_due(self, store: JobStore, table: str, dest: str | None = None) -> None:
        """Sleep until the next row of ``table`` (of ``dest``) is due (at most IDLE_WAIT_S) or ``wake``
        is set."""
        nxt = store.next_due(table, dest)
        self.wake.wait(IDLE_WAIT_S if nxt is None else min(IDLE_WAIT_S, max(MIN_WAIT_S, nxt - time.time())))
        self.wake.clear()
