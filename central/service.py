"""`Central`: the campus-side service as one object, which `campus web`, `campus ingest` and `campus demo` build.

Central is a database (the registry and the ledger), a point store, and the
threads that work on them: the command service (MQTT, answers and
republishing), the alarm monitor, the scheduler and the usage rollup. Before this module each
program opened its own pieces and a blueprint (`dashboards/health.py`)
started threads at import of its area; now `Central.open(config)` opens the
pieces in one place, `start()` starts the threads together and `close()`
stops them before the database and the store close (a thread still
evaluating alarms must not find its ledger closed under it).

The web app reaches it through `dashboards.context.central()` (Flask's
`get_db()` pattern); ingest takes its `store` and `ledger`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from central import city_push, lists
from central import usage_rollup as rollup
from central.alarms import AlarmMonitor
from central.attendance import AttendanceRetention  # also registers its ledger observer (late swipes)
from central.city_push import CityLink, CityPusher
from central.commands import CommandService
from central.db import Database, open_database, url_of
from central.ledger import Ledger
from central.notify.outbox import DEFAULT_WINDOW_S, Notifier
from central.registry import Registry
from central.schedules import Scheduler
from central.store.base import PointStore
from central.usage_rollup import UsageRollup

log = logging.getLogger(__name__)

DEFAULT_ALARM_INTERVAL_S = 5.0
DEFAULT_SCHEDULE_INTERVAL_S = 20.0
ALARM_INTERVAL_ENV = "CAMPUS_ALARM_INTERVAL"
SCHEDULE_INTERVAL_ENV = "CAMPUS_SCHEDULE_INTERVAL"
# Seconds the first alarm transition of a group waits for others (docs/notifications.md); default 30.
NOTIFY_WINDOW_ENV = "CAMPUS_NOTIFY_WINDOW"
# Seconds between runs of the attendance retention (central/attendance.py); 0 turns it off.
ATTENDANCE_INTERVAL_ENV = "CAMPUS_ATTENDANCE_INTERVAL"
DEFAULT_ATTENDANCE_INTERVAL_S = 3600.0


@dataclass
class CentralConfig:
    """What Central is opened on.

    `alarm_interval` / `schedule_interval`: seconds between alarm evaluations and schedule checks; None takes
    `CAMPUS_ALARM_INTERVAL` / `CAMPUS_SCHEDULE_INTERVAL` from the environment, else the defaults; 0 turns one
    off. `commands`: a command service on `mqtt_url` (web, demo), not for ingest, which has its own
    connection. `background`: the alarm monitor and scheduler (web, demo), off for ingest workers, which
    may be many (one evaluation per web instance is enough)."""
    store_url: str
    # The central database (registry and ledger): sqlite:///PATH or postgresql://...; a bare path is
    # that SQLite file.
    db_url: str
    mqtt_url: str | None = None
    alarm_interval: float | None = None
    schedule_interval: float | None = None
    # Seconds between refreshes of today's usage rollup (central/usage_rollup.py); None: CAMPUS_USAGE_INTERVAL.
    usage_interval: float | None = None
    commands: bool = True
    background: bool = True
    # A district of a city: where its rollups go (central/city_push.py); pushed by the background work.
    city: CityLink | None = None
    # Bring the database to this release's schema at open: None, SQLite only (a server database is
    # upgraded by `campus db upgrade`); True for the demo, which owns its database.
    upgrade: bool | None = None
    # The site's time zone (`campus web --timezone`): the local day of a school without a timetable of its own
    # in the usage rollup, the wall clock its schedules' `at` is read on; None: Asia/Shanghai.
    timezone: str | None = None


def interval(value: float | None, env: str, default: float) -> float:
    """A background interval in seconds: `value` if given, else `env` from the environment, else `default`;
    never negative (0: off). A malformed variable is logged and the default used (a typo must not stop
    the web app)."""
    if value is None:
        raw = os.environ.get(env, "")
        try:
            value = float(raw) if raw.strip() else default
        except ValueError:
            log.warning("%s=%r is not a number of seconds; using %s", env, raw, default)
            value = default
    return max(0.0, float(value))


def open_central_database(db_url: str, upgrade: bool | None = None) -> Database:
    """The central database, reachable and at this release's schema (SQLite: upgraded now)."""
    return open_database(url_of(db_url), upgrade=upgrade)


@dataclass
class Central:
    """The database, the point store and the threads that work on them; see the module docstring.

    `commands` is None without an MQTT URL (commands then fail with a clear message); `alarm_monitor` and
    `scheduler` are None until `start()` and after `stop()`, or when turned off."""
    config: CentralConfig
    db: Database
    registry: Registry
    ledger: Ledger
    store: PointStore
    commands: CommandService | None = None
    alarm_monitor: AlarmMonitor | None = None
    scheduler: Scheduler | None = None
    city_pusher: CityPusher | None = None
    # Alarms to people (central/notify): run by the alarm monitor after each evaluation; the web app attaches
    # its Babel (messages in each channel's language) and sends test messages through it.
    notifier: Notifier | None = None
    usage_rollup: UsageRollup | None = None
    attendance_retention: AttendanceRetention | None = None
    # The board's ranking and counts of the district, read at most once per CAMPUS_BOARD_CACHE_S (central/lists.py).
    board_snapshots: lists.BoardSnapshots = field(default_factory=lists.BoardSnapshots)
    _started: bool = field(default=False, repr=False)
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def open(cls, config: CentralConfig, *, check_store: bool = False) -> Central:
        """Open the point store and the database (nothing runs until `start()`). `check_store`: first make
        sure the store answers (a wrong address, token or database is said now, before the database is
        touched, not retried silently for ever)."""
        from campus.urls import parse_mqtt_url
        from central.store import open_store

        mqtt = parse_mqtt_url(config.mqtt_url) if config.mqtt_url and config.commands else None
        store = open_store(config.store_url)
        try:
            if check_store:
                store.check()
            db = open_central_database(config.db_url, config.upgrade)
        except BaseException:
            store.close()
            raise
        registry, ledger = Registry(db), Ledger(db)
        commands = CommandService(mqtt, ledger) if mqtt is not None else None
        return cls(config=config, db=db, registry=registry, ledger=ledger, store=store, commands=commands,
                   notifier=Notifier(registry, window=interval(None, NOTIFY_WINDOW_ENV, DEFAULT_WINDOW_S)))

    @property
    def alarm_interval(self) -> float:
        return interval(self.config.alarm_interval, ALARM_INTERVAL_ENV, DEFAULT_ALARM_INTERVAL_S)

    @property
    def schedule_interval(self) -> float:
        return interval(self.config.schedule_interval, SCHEDULE_INTERVAL_ENV, DEFAULT_SCHEDULE_INTERVAL_S)

    @property
    def city_intervals(self) -> tuple[float, float]:
        """Seconds between pushes to the city and between computations of the week's usage rate."""
        return (interval(None, city_push.INTERVAL_ENV, city_push.DEFAULT_INTERVAL_S),
                interval(None, city_push.USAGE_INTERVAL_ENV, city_push.DEFAULT_USAGE_INTERVAL_S))

    def start(self) -> Central:
        """Start the command service, then the alarm monitor and the scheduler (which sends through it),
        and the push to the city of a district that has one.
        Raises CampusError if the broker cannot be reached; whatever started is stopped again."""
        if self._started:
            return self
        if self._closed:
            raise RuntimeError("Central is closed")
        self._started = True
        try:
            if self.commands is not None:
                self.commands.start()
            if self.config.background:
                alarm_s, sched_s = self.alarm_interval, self.schedule_interval
                site_zone = ZoneInfo(self.config.timezone) if self.config.timezone else None
                if alarm_s > 0:
                    self.alarm_monitor = AlarmMonitor(self.registry, self.ledger, alarm_s, self.notifier).start()
                if sched_s > 0:
                    # Late bound: whatever command service Central has when a schedule runs.
                    self.scheduler = Scheduler(self.registry, self.ledger, lambda: self.commands, sched_s,
                                               site_zone=site_zone).start()
                refresh_s = interval(self.config.usage_interval, rollup.REFRESH_ENV, rollup.DEFAULT_REFRESH_S)
                if refresh_s > 0:
                    days = int(rollup.setting(rollup.DAYS_ENV, rollup.DEFAULT_DAYS))
                    self.usage_rollup = UsageRollup(
                        self.registry, self.ledger, self.store, refresh_s, days, site_zone=site_zone).start()
                retention_s = interval(None, ATTENDANCE_INTERVAL_ENV, DEFAULT_ATTENDANCE_INTERVAL_S)
                if retention_s > 0:
                    self.attendance_retention = AttendanceRetention(
                        self.registry, retention_s, site_zone=site_zone).start()
                push_s, usage_s = self.city_intervals
                if self.config.city is not None and push_s > 0:
                    self.city_pusher = CityPusher(self.config.city, self.registry, self.ledger, self.store, push_s,
                                                  usage_s, site_zone=site_zone).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the threads, each joined: the city push, the scheduler (it sends commands), then the alarm
        monitor, then the command service. The database and the store stay open."""
        if self.city_pusher is not None:
            self.city_pusher.stop()
            self.city_pusher = None
        if self.attendance_retention is not None:
            self.attendance_retention.stop()
            self.attendance_retention = None
        if self.usage_rollup is not None:
            self.usage_rollup.stop()
            self.usage_rollup = None
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        if self.alarm_monitor is not None:
            self.alarm_monitor.stop()
            self.alarm_monitor = None
        if self.commands is not None and self._started:
            self.commands.stop()
        self._started = False

    def release(self) -> None:
        """The calling thread gives back the point store's connection it holds; the central database's
        connections go back to their pool after each use."""
        self.store.release()

    def close(self) -> None:
        """Stop the threads, then close the store and the database."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        self.store.close()
        self.db.close()

    def __enter__(self) -> Central:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
