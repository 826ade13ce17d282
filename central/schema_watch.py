"""A running program notices that the central database was upgraded under it, and stops.

A district upgrades by stopping every program, running `campus db upgrade` once and starting the new
release (docs/deployment.md). A program still running on a host that was missed keeps writing with the
old code into the new schema, and nothing says so: an old `campus jobs` writes day rows without the week
rows and day totals migration 0023 keeps beside them, and the reports read stale sums. Each program
checks the schema at start (`migrations.ensure_current`); `SchemaWatch` repeats that check while it
runs, every SCHEMA_CHECK_S seconds (CAMPUS_SCHEMA_CHECK_INTERVAL; 0 turns it off), from the program's
own main loop (`campus ingest` and `campus jobs`: `campus.signals.wait_for_signal`'s tick; `campus web`:
gunicorn's arbiter loop, dashboards/server.py), so it costs no thread. A revision other than this
release's ends the wait with `SchemaChanged`, a CampusError: the program stops the way SIGTERM stops it
(ingest writes and acknowledges what it holds, leaves the rest to the broker), then exits with the
one line `campus: error: ...` and status 2, which a service manager's `Restart=on-failure` answers
with the new release, whose start-up check says what to do.

A database that cannot be read at that moment (PostgreSQL restarting) is no reason to stop: the round
is skipped, and the outage is said once, when it starts, and once when it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from campus.errors import StoreError
from central import migrations
from central.db import Database

log = logging.getLogger(__name__)

SCHEMA_CHECK_ENV = "CAMPUS_SCHEMA_CHECK_INTERVAL"
SCHEMA_CHECK_S = 60.0


class SchemaChanged(StoreError):
    """The central database's schema is no longer the one this program's release was written for."""


def changed_message(db_name: str, now: str | None, want: str) -> str:
    """The one line that says the database moved under a running program, naming both revisions.
    A revision this release knows is an older one (the database was moved back: restored from a dump)."""
    if now is None or migrations.known(now):
        return (f"the central database {db_name} was moved back to schema {now or 'none'} while this program "
                f"(schema {want}) ran: stopping; bring it to this release's schema (`campus db upgrade`)")
    return (f"the central database {db_name} was upgraded to schema {now} while this program "
            f"(schema {want}) ran: stopping; start this machine's new release")


class SchemaWatch:
    """Reads the database's schema revision every `interval` seconds when `poll()` is called (a program's
    loop calls it often; most calls only look at the clock) and raises SchemaChanged once it is not
    this release's head.

    `interval` None: CAMPUS_SCHEMA_CHECK_INTERVAL, else SCHEMA_CHECK_S; 0 never checks. `release`: give
    the pool's connections back after each read (gunicorn's arbiter forks workers between its checks, and
    a database connection must not cross a fork). `read`: how the revision is read (tests inject a
    failure; the default is `migrations.current` on `db`)."""

    def __init__(self, db: Database, interval: float | None = None, *, release: bool = False,
                 read: Callable[[], str | None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        from central.service import interval as setting

        self.db = db
        self.want = migrations.head()
        self.interval = setting(interval, SCHEMA_CHECK_ENV, SCHEMA_CHECK_S)
        self.release = release
        self._read = read or self._read_current
        self._clock = clock
        self._due = clock() + self.interval
        self.unreadable = False  # an outage is under way (said once)

    def _read_current(self) -> str | None:
        try:
            with self.db.read("cannot read the schema version") as conn:
                return migrations.current(conn)
        finally:
            if self.release:
                self.db.engine.dispose()

    def poll(self) -> None:
        """Check now if a check is due; SchemaChanged if the database is at another schema."""
        if self.interval <= 0 or self._clock() < self._due:
            return
        try:
            self.check()
        finally:
            self._due = self._clock() + self.interval

    def check(self) -> None:
        """Read the revision once: SchemaChanged if it is not this release's; an unreadable database is
        one warning when the outage starts, one line when it ends, and no stop."""
        try:
            now = self._read()
        except StoreError as exc:
            if not self.unreadable:
                self.unreadable = True
                log.warning("schema check skipped while the database cannot be read (said once per outage): %s", exc)
            return
        if self.unreadable:
            self.unreadable = False
            log.info("schema check: the central database %s can be read again", self.db.name)
        if now != self.want:
            raise SchemaChanged(changed_message(self.db.name, now, self.want))
