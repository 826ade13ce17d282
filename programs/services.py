"""The start-up of each central service, written once: `campus ingest`, `campus web` and `campus demo`
all start their ingest and their dashboard here, on a `Central` their caller opened (and closes).

Each `start_*` returns a running service whose `stop()` ends it in the order that loses nothing: the
ingest writes its last batch and sends its acknowledgements before it leaves the broker; the web server
stops accepting, then the open streams end.
"""

from __future__ import annotations

import logging
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
    arrives into `central`'s point store and ledger."""
    from campus.urls import parse_mqtt_url, redacted
    from central.ingest import Ingest

    tuning: dict[str, float | int] = {}
    if session_expiry is not None:
        tuning["session_expiry"] = int(session_expiry)
    if ack_max_delay is not None:
        tuning["ack_max_delay"] = ack_max_delay
    ingest = Ingest(parse_mqtt_url(mqtt_url), central.store, central.ledger, name=name, share_group=share_group,
                    **tuning)  # type: ignore[arg-type]
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


def start_web(central: Central, config: WebConfig, host: str, port: int, *,
              password_dir: Path | None = None, admin_token: str | None = None) -> RunningWeb:
    """Serve the dashboard on host:port over `central` and start its background work. With
    `password_dir` (`campus web`), there is an `admin` user owning `admin_token`: made now on a first start,
    its password written into that directory, in a file only its owner reads (under systemd stdout is the
    journal)."""
    from central.broker_config import atomic_write
    from dashboards import create_app
    from dashboards.server import serve

    app = create_app(config, central)
    central.start()
    if password_dir is not None:
        password = central.registry.ensure_admin(admin_token)
        if password and password_dir is not None:
            where = password_dir.resolve() / "admin-password.txt"
            atomic_write(where, f"admin {password}\n", mode=0o600)
            print(f"campus web: created user admin; its password is in {where} (mode 0600). Change it with "
                  "`campus users add admin --role admin`, then delete that file", flush=True)
    return RunningWeb(app, serve(app, host, port))
