"""The background job that several web instances each run and one of them does: `LeasedWorker`.

The alarm monitor, the usage rollup, the attendance retention and the city push are the same loop: a
daemon thread that wakes every few seconds, takes a named lease in the central database
(`Database.take_lease`) so that of several web processes on one database only the holder works, runs a
round, survives whatever the round raises (a database restarting is one warning line, anything else a
logged traceback: a bad moment must not end the job), and stops on an event, giving the lease up so that
another instance takes over at its next round rather than a lease later. That loop is spelled here once;
each job is a subclass that says what a round does (`round`) and how long it may take (`ttl`, `join_s`).
The scheduler is the same loop without a lease: every instance checks, its claims decide who runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Self

from campus.errors import StoreError
from central.db import Database


class LeasedWorker:
    """Calls `round()` every `interval` seconds from a daemon thread while it holds the lease `lease`.

    - `ttl`: how long a taken lease lasts; renewed at every wake-up, so it must outlast a round's work
      plus the wait after it, else a long round hands the lease to another instance mid-round.
    - `first_wait`: seconds before the first round (0: at start).
    - `join_s`: how long stop() waits for a round in progress (the longest a round takes, and a margin).
    - `release`: called after every wake-up, held or not, whatever happened (the point store's
      connection goes back to its pool: a thread asleep holds none).
    - `lease=None`: every instance works (the job deduplicates its own work, as the scheduler's claims).

    `round()` returns the seconds until the next wake-up, or None for `interval` (a job with work left
    comes back sooner). `rounds` counts the rounds that ran to the end under the lease. Log lines go to the
    subclass's module logger, each naming the job (`what`).
    """

    def __init__(self, db: Database, lease: str | None, *, interval: float, name: str, what: str, ttl: float = 0.0,
                 first_wait: float = 0.0, join_s: float = 30.0, release: Callable[[], None] | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"the {what}'s interval must be positive")
        self.db, self.lease, self.interval, self.ttl = db, lease, interval, ttl
        self.what, self.first_wait, self.join_s, self._release = what, first_wait, join_s, release
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.rounds = 0
        self._log = logging.getLogger(type(self).__module__)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def round(self) -> float | None:
        """One round of the job's work, run only by the lease's holder; the seconds until the next one."""
        raise NotImplementedError

    def stopping(self) -> bool:
        """True once stop() was called: a long round asks between its steps and ends early."""
        return self._stop.is_set()

    def start(self) -> Self:
        self._thread.start()
        return self

    def _run(self) -> None:
        wait = self.first_wait
        while not self._stop.wait(wait):
            wait = self.interval
            try:
                if self.lease is None or self.db.take_lease(self.lease, self.holder, self.ttl):
                    after = self.round()
                    self.rounds += 1
                    if after is not None:
                        wait = max(0.0, after)
            except StoreError as exc:  # the database is away (restarting): one line, and the next round
                self._log.warning("%s: %s; retrying in %.0f s", self.what, exc, wait)
            except Exception:  # noqa: BLE001 - a bad moment must not end the job
                self._log.exception("%s failed; retrying in %.0f s", self.what, wait)
            finally:
                if self._release is not None:
                    self._release()

    def stop(self) -> None:
        """Stop waking, wait for a round in progress (up to `join_s`), and give the lease up: another
        instance takes over at its next round, not a lease later."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.join_s)
        if self.lease is None:
            return
        try:
            self.db.drop_lease(self.lease, self.holder)
        except StoreError as exc:
            self._log.warning("%s: %s", self.what, exc)
