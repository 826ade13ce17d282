"""`LeasedWorker` (central/workers.py), the loop of central's background jobs, on a real central database.

Two workers on two engines of one database stand for two web processes: the lease lets one work, the
other takes over only once the holder's lease has run out (a holder stuck in a round) or been given up
(a holder stopping). Each test runs on SQLite and on PostgreSQL (`central_db_url`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from campus.errors import StoreError
from central.db import Database, leases, open_database
from central.workers import LeasedWorker
from tests.servers import wait_until


class Job(LeasedWorker):
    """A worker whose round is the test's `work` (None: nothing), counting wake-ups and round starts."""

    def __init__(self, db: Database, work: Callable[[Job], float | None] | None = None, *, lease: str | None = "job",
                 interval: float = 0.02, ttl: float = 30.0, join_s: float = 30.0) -> None:
        super().__init__(db, lease, interval=interval, ttl=ttl, name="test-job", what="test job", join_s=join_s,
                         release=self._woke)
        self.work, self.wakes, self.started_at = work, 0, []  # started_at: time.time() of each round's start
        self.wakes_before = 0  # wake-ups before its first round

    def _woke(self) -> None:
        self.wakes += 1

    def round(self) -> float | None:
        if not self.started_at:
            self.wakes_before = self.wakes
        self.started_at.append(time.time())
        return self.work(self) if self.work is not None else None


@pytest.fixture
def dbs(central_db_url: str) -> Iterator[tuple[Database, Database]]:
    """Two engines on one central database: two web processes' views of it."""
    first, second = open_database(central_db_url), open_database(central_db_url)
    yield first, second
    first.close()
    second.close()


def _until(db: Database, name: str) -> float:
    with db.read() as conn:
        return conn.execute(leases.select().where(leases.c.name == name)).one().until


def test_of_two_workers_one_works_and_the_other_only_once_the_lease_ran_out(dbs: tuple[Database, Database]) -> None:
    stuck, release = threading.Event(), threading.Event()
    expires: list[float] = []

    def first_work(job: Job) -> None:
        if len(job.started_at) == 10:  # the holder hangs in its tenth round: it stops renewing its lease
            expires.append(_until(job.db, "job"))  # as it last renewed it
            stuck.set()
            release.wait(30)

    # The lease outlasts a loaded machine's pause between two renewals: only the stuck round lets it run out.
    first = Job(dbs[0], first_work, ttl=2.0).start()
    second = Job(dbs[1], ttl=2.0)
    try:
        wait_until(lambda: first.rounds >= 2, 10, message="the first worker holds the lease and works")
        started = time.time()
        second.start()
        wait_until(stuck.is_set, 10, message="the holder stuck in a round")
        wait_until(lambda: second.rounds >= 3, 10, message="the second worker took the expired lease over")
        # While it waited, the second one looked once an interval, not in a loop: a bound a spinning loop
        # (thousands of looks) breaks and a slow machine (fewer looks) keeps.
        assert second.wakes_before <= 2 * (second.started_at[0] - started) / second.interval + 5
        assert first.rounds >= 9 and second.started_at[0] >= expires[0]  # not before the holder's lease ran out
        release.set()
        wait_until(lambda: first.wakes > first.rounds + 2, 10, message="the old holder waking again")
        held = first.rounds
        wait_until(lambda: second.rounds >= 20, 10, message="the new holder goes on")
        assert first.rounds == held  # the old holder, back, finds the lease taken and leaves the work
    finally:
        release.set()
        first.stop()
        second.stop()


def test_a_holder_stopping_gives_the_lease_up_at_once(dbs: tuple[Database, Database]) -> None:
    first = Job(dbs[0], ttl=3600).start()
    wait_until(lambda: first.rounds >= 1, 10, message="the first worker works")
    second = Job(dbs[1], ttl=3600).start()
    try:
        wait_until(lambda: second.wakes >= 5, 10, message="the second worker looking")
        assert second.rounds == 0  # an hour's lease held by the first
        first.stop()
        assert not first._thread.is_alive()
        wait_until(lambda: second.rounds >= 1, 10, message="the second worker taking the given-up lease")
    finally:
        first.stop()
        second.stop()


def test_a_failing_round_is_logged_and_the_next_one_runs(dbs: tuple[Database, Database],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    def work(job: Job) -> None:
        n = len(job.started_at)
        if n == 1:
            raise RuntimeError("a bad moment")
        if n == 2:
            raise StoreError("the database is restarting")

    caplog.set_level(logging.WARNING, logger=__name__)
    job = Job(dbs[0], work).start()
    try:
        wait_until(lambda: job.rounds >= 3, 10, message="rounds after the failures")
    finally:
        job.stop()
    assert len(job.started_at) >= job.rounds + 2  # the two failed rounds are not counted
    assert job.wakes >= len(job.started_at)  # release ran after every wake-up, the failed ones too
    mine = [r for r in caplog.records if r.name == __name__]  # the subclass's module logger
    failed = [r for r in mine if r.levelno == logging.ERROR]
    assert len(failed) == 1 and "test job failed" in failed[0].getMessage()
    assert failed[0].exc_info and "a bad moment" in str(failed[0].exc_info[1])
    away = [r for r in mine if r.levelno == logging.WARNING]
    assert len(away) == 1 and "the database is restarting" in away[0].getMessage() and not away[0].exc_info


def test_stop_interrupts_the_wait_and_a_long_round_can_ask(dbs: tuple[Database, Database]) -> None:
    """An hour's interval: stop() returns at once, not after it; a round in progress sees `stopping()`."""
    in_round, saw_stop = threading.Event(), threading.Event()

    def work(job: Job) -> float | None:
        if len(job.started_at) == 2:
            in_round.set()
            while not job.stopping():  # a backfill's steps asking between themselves
                time.sleep(0.01)
            saw_stop.set()
        return 0.0 if len(job.started_at) < 2 else None  # the next round at once, then an hour

    idle = Job(dbs[0], interval=3600, join_s=3600).start()
    busy = Job(dbs[1], work, lease="other", interval=3600, join_s=3600).start()
    wait_until(lambda: idle.rounds == 1, 10, message="the first round, at start")
    wait_until(in_round.is_set, 10, message="the second round, at once")
    for job in (idle, busy):
        _stops_within_a_deadline(job)
    assert saw_stop.is_set() and busy.rounds == 2
    assert _until(dbs[0], "job") == 0.0 and _until(dbs[0], "other") == 0.0  # both given up


def _stops_within_a_deadline(job: Job) -> None:
    """stop() from another thread returns within 10 s (a wait not interrupted would take the hour)."""
    stopper = threading.Thread(target=job.stop, daemon=True)
    stopper.start()
    wait_until(lambda: not stopper.is_alive(), 10, message="stop() returning")
    assert not job._thread.is_alive()


def test_without_a_lease_every_worker_works(dbs: tuple[Database, Database]) -> None:
    jobs = [Job(db, lease=None).start() for db in dbs]
    try:
        wait_until(lambda: all(j.rounds >= 3 for j in jobs), 10, message="both working")
    finally:
        for job in jobs:
            job.stop()
    with dbs[0].read() as conn:
        assert conn.execute(leases.select()).all() == []
    with pytest.raises(ValueError, match="interval must be positive"):
        Job(dbs[0], interval=0)


def test_the_attendance_retention_runs_under_its_lease(dbs: tuple[Database, Database]) -> None:
    """The one job with no loop test of its own: two instances, one retention round maker."""
    from central.attendance import AttendanceRetention
    from central.registry import Registry

    jobs = [AttendanceRetention(Registry(db), interval=0.05) for db in dbs]
    try:
        for job in jobs:
            job.start()
        wait_until(lambda: sum(j.rounds for j in jobs) >= 5, 10, message="retention rounds")
        holder = next(j for j in jobs if j.rounds)
        assert sorted(j.rounds > 0 for j in jobs) == [False, True]
        with dbs[0].read() as conn:
            assert conn.execute(leases.select()).one()[:2] == ("attendance-retention", holder.holder)
    finally:
        for job in jobs:
            job.stop()
    assert _until(dbs[0], "attendance-retention") == 0.0
