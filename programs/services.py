"""The start-up of each central service, written once: `campus ingest`, `campus web`, `campus jobs` and
`campus demo` start their ingest, their dashboard and central's background jobs here. `start_ingest` and
`start_web` (the demo's in-process server) run on a `Central` their caller opened (and closes);
`serve_web` is `campus web` under gunicorn, whose workers each build their own Central with the same
`create_app`; `run_jobs` is `campus jobs`.

`campus jobs` runs central's background work (alarm monitor, scheduler, usage rollup, attendance
retention, city push: `Central.start` with `background`) in a process of its own, so that a district's
web workers (`campus web --no-jobs`) never share their interpreter with an alarm round or a rollup's
backfill (docs/benchmarks.md 10c, 11h). It builds the same web app as `campus web` (`create_app` on its
Central) and serves no HTTP: the app's areas are what wires central to what only the web layer has (the
notifier's messages in each channel's language from the web's catalogs and the site's zone,
dashboards/notifications.py `register`; whatever an area hooks onto Central later), so building it is the
one way the jobs cannot drift from what a web worker running them would do. Picking those hooks out by
hand would save ~30 MB and a second of start-up, and be a second copy of the wiring to keep in step.

Each `start_*` returns a running service whose `stop()` ends it in the order that loses nothing: the
ingest writes its last batch and sends its acknowledgements before it leaves the broker; the web server
stops accepting, then the open streams end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from central.service import Central
from dashboards import WebConfig
from dashboards.server import RunningServer

log = logging.getLogger("campus")


@dataclass
class RunningIngest:
    """An ingest subscribed and writing from its own thread."""

    ingest: object  # central.ingest.Ingest
    thread: threading.Thread
    stop_event: threading.Event = field(default_factory=threading.Event)

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        self.ingest.close()  # type: ignore[attr-defined]  # the last batch's acks, then the broker connection


def start_ingest(central: Central, mqtt_url: str, *, name: str = "ingest", share_group: str | None = None,
                 session_expiry: int | None = None, ack_max_delay: float | None = None) -> RunningIngest:
    """Connect an ingest worker to the broker (CampusError naming it if it cannot) and start writing what
    arrives into `central`'s point store and ledger. None: Ingest's defaults (the session's depends on
    `share_group`)."""
    from campus.urls import parse_mqtt_url, redacted
    from central.acks import ACK_MAX_DELAY_S
    from central.ingest import Ingest

    ingest = Ingest(parse_mqtt_url(mqtt_url), central.store, central.ledger, name=name, share_group=share_group,
                    session_expiry=None if session_expiry is None else int(session_expiry),
                    ack_max_delay=ACK_MAX_DELAY_S if ack_max_delay is None else ack_max_delay)
    ingest.connect()
    running = RunningIngest(ingest, threading.Thread(target=lambda: ingest.run(running.stop_event),
                                                     name="ingest-writer", daemon=True))
    running.thread.start()
    log.info("ingest %s: %s -> %s", name, redacted(mqtt_url), redacted(central.config.store_url))
    return running


@dataclass
class RunningWeb:
    """The dashboard and API served, with `central`'s commands, alarm monitor and scheduler running."""

    app: object  # flask.Flask
    server: RunningServer

    @property
    def url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}/"

    def stop(self) -> None:
        from dashboards import close_app

        self.server.shutdown()
        close_app(self.app)  # type: ignore[arg-type]  # open streams end; the caller then closes central


def ensure_first_admin(central: Central, password_dir: Path, admin_token: str | None = None) -> None:
    """There is an `admin` user owning `admin_token`: made now on a first start, its password written into
    `password_dir`, in a file only its owner reads (not onto stdout: under systemd stdout is the journal)."""
    from central.broker_config import atomic_write

    password = central.registry.ensure_admin(admin_token)
    if password:
        where = password_dir.resolve() / "admin-password.txt"
        atomic_write(where, f"admin {password}\n", mode=0o600)
        print(f"campus web: created user admin; its password is in {where} (mode 0600). Change it with "
              "`campus users add admin --role admin`, then delete that file", flush=True)


def start_web(central: Central, config: WebConfig, host: str, port: int) -> RunningWeb:
    """Serve the dashboard on host:port over `central` from a thread of this process (Werkzeug: the demo,
    one process holding its broker, simulators and agents beside it) and start central's background work."""
    from dashboards import create_app
    from dashboards.server import serve

    app = create_app(config, central)
    central.start()
    return RunningWeb(app, serve(app, host, port))


def serve_web(config: WebConfig, host: str, port: int, *, workers: int = 1, threads: int | None = None,
              pin: bool = True, password_dir: Path, admin_token: str | None = None) -> None:
    """`campus web`: serve the dashboard with gunicorn until SIGINT/SIGTERM, or until the database's schema
    is no longer this release's (SchemaChanged, once the server stopped). First, before any worker
    starts, so that a wrong store, database or broker is one line: reach them all (history comes from the
    store), bring SQLite to this release's schema, make the first admin; closed again before the fork,
    since each worker opens its own Central (started: commands, alarm monitor, scheduler)."""
    import dataclasses

    from central.db import Database
    from central.schema_watch import SchemaWatch
    from dashboards import create_app
    from dashboards.server import DEFAULT_THREADS, listen, serve_workers

    with Central.open(dataclasses.replace(config.central_config(), background=False), check_store=True) as central:
        central.start()  # the broker answers (commands)
        ensure_first_admin(central, password_dir, admin_token)
    sock = listen(host, port)
    threads = threads or DEFAULT_THREADS
    print(f"campus web: http://{host}:{sock.getsockname()[1]}/ ({workers} worker(s) of {threads} threads"
          + ("" if config.background else "; background jobs left to `campus jobs`") + ")", flush=True)
    # The arbiter itself watches the schema (one reader per server, not one per worker) and on a change
    # stops the whole server gracefully; its connection is given back after each read (it forks workers).
    db = Database(config.db_url)
    try:
        serve_workers(lambda: create_app(config), sock, workers=workers, threads=threads, pin=pin,
                      tick=SchemaWatch(db, release=True).poll)
    finally:
        db.close()


def running_jobs(central: Central) -> list[str]:
    """What of central's background work runs in this process (`campus jobs`' start line)."""
    jobs = {"alarm monitor": central.alarm_monitor, "scheduler": central.scheduler,
            "usage rollup": central.usage_rollup, "attendance retention": central.attendance_retention,
            "city push": central.city_pusher}
    return [name for name, job in jobs.items() if job is not None]


def run_jobs(config: WebConfig, stop: threading.Event | None = None) -> None:
    """`campus jobs`: central's background jobs (and the command service they send through) until
    SIGINT/SIGTERM or `stop`, or until the database's schema is no longer this release's (SchemaChanged,
    raised once stopped: central/schema_watch.py); then each job ends its round and gives its lease up, so another `campus jobs`
    (a standby on another host) takes over at its next round. A wrong store, database or broker is
    CampusError before anything runs. See the module docstring for why the web app is built."""
    from campus.signals import wait_for_signal
    from central.schema_watch import SchemaWatch
    from dashboards import close_app, create_app

    config = dataclasses.replace(config, background=True)
    with Central.open(config.central_config(), check_store=True) as central:
        app = create_app(config, central)
        try:
            central.start()
            jobs = running_jobs(central)
            print(f"campus jobs: {', '.join(jobs) or 'nothing (every interval is 0)'} on "
                  f"{central.db.name} (pid {os.getpid()}); SIGTERM or Ctrl-C stops", flush=True)
            # The database upgraded under us ends the wait too (SchemaChanged), stopping as a signal does.
            wait_for_signal(stop or threading.Event(), tick=SchemaWatch(central.db).poll)
        finally:
            close_app(app)  # the app's hooks; central's jobs stop (leases given up) as the `with` closes it
