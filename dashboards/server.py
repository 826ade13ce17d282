"""Serving the Flask app: gunicorn for `campus web`, a thread in the program for the demo and the tests.

`campus web` runs `serve_workers`: gunicorn, embedded (`gunicorn.app.base.BaseApplication`, so it stays one
command), with `--workers` processes of gthread workers, `--threads` threads each. Why gunicorn: it is the
maintained WSGI server that runs several processes (waitress and cheroot are one process with a thread
pool, so `--workers` would have to be home-made), it restarts a worker that dies, and it stops gracefully
on SIGTERM. Why gthread: a panel's event stream holds a thread for as long as it is open, in every
WSGI server; gthread parks idle keep-alive connections in its poller instead. The pool's threads all start
with the worker (`_Worker._start_threads`: ~18 KB each), so that a burst of streams is not dispatched one
thread start at a time (DEFAULT_THREADS; bench/panels.py measured 500 streams).

Each worker process builds its own app and `Central` after the fork (nothing threaded crosses a fork):
its own database pool, broker connection and panel poller. Several are safe together: the alarm monitor
and the command republisher take database leases or claim rows, and schedules claim each run (central/);
sessions are rows of the database. The login and command rate limits are per process: N workers allow
N times the rate.

Stopping (SIGTERM, or SIGINT/Ctrl-C, the same): gunicorn stops accepting; each worker ends its open
event streams at once (the panel's EventSource reconnects to whichever server answers next) and
finishes its other requests (GRACEFUL_S at most); then it closes its app, whose Central stops its
threads and closes the database. Nothing is lost: a command is recorded before it is published.
The arbiter also stops the whole server so, and then `campus web` exits with status 2, when its
`tick` (the schema watch, central/schema_watch.py) says the database was upgraded under it.

`serve` runs Werkzeug's threaded server in a thread of the calling program: the demo (one process holding
its broker, simulators, agents and ingest, which a forking server cannot run beside) and tests that need
the app and a real socket in one process. It is not what a school's server runs.
"""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.sock import TCP6Socket, TCPSocket
from gunicorn.workers.gthread import ThreadWorker
from werkzeug.serving import BaseWSGIServer, make_server

from campus.errors import CampusError

log = logging.getLogger(__name__)

DEFAULT_THREADS = 1000  # per worker: 500 panels and the pages beside them (threads start as needed)
GRACEFUL_S = 20         # a stopping worker's in-flight requests get this long (a command waits 5 s)
BACKLOG = 2048          # connections waiting to be accepted: every panel of a school opening at 8:00


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or CampusError in one line (never a server's own traceback or exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise CampusError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


# ---------------------------------------------------------------- gunicorn (`campus web`)


def serve_workers(build: Callable[[], Flask], sock: socket.socket, *, workers: int = 1,
                  threads: int = DEFAULT_THREADS, pin: bool = True, tick: Callable[[], None] | None = None) -> None:
    """Serve the apps `build()` makes (once in each worker process) on the listening `sock` until SIGTERM or
    SIGINT, then stop gracefully (see the module docstring) and return. CampusError if the workers cannot
    start (their log says why). `pin`: each worker on one CPU (`_Worker._pin_to_cpu`). `tick`: called by the
    arbiter about once a second (central/schema_watch.py);
    a CampusError it raises stops the whole server as SIGTERM does, then is raised here."""
    if workers < 1 or threads < 1:
        raise CampusError("--workers and --threads must be at least 1")
    server = _Gunicorn(build, sock, workers, threads)
    server.pin = pin
    arbiter = _Arbiter(server)
    arbiter.tick = tick
    # gunicorn would bind the address itself (retrying, then exiting with its own message): it gets the
    # socket we bound instead, as it gets one from systemd.
    kind = TCP6Socket if sock.family == socket.AF_INET6 else TCPSocket
    host, port = sock.getsockname()[:2]
    arbiter.LISTENERS = [kind((host, port), server.cfg, arbiter.log, fd=sock.detach())]
    try:
        arbiter.run()
    except SystemExit as exc:
        if arbiter.stopped_by is not None:
            raise arbiter.stopped_by from None
        if exc.code not in (0, None):
            raise CampusError(f"the web workers stopped (status {exc.code}); the log above says why") from None


class _Gunicorn(BaseApplication):  # type: ignore[misc]  # gunicorn has no type hints
    pin = True  # each worker on one CPU (`_Worker._pin_to_cpu`)

    def __init__(self, build: Callable[[], Flask], sock: socket.socket, workers: int, threads: int) -> None:
        self.build = build
        host, port = sock.getsockname()[:2]
        self.options = {
            "bind": [f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"],
            "workers": workers, "threads": threads, "worker_class": _Worker,
            # Idle keep-alive connections wait in the poller, not in a thread: room for them beside the streams.
            "worker_connections": threads + 1000, "backlog": BACKLOG, "keepalive": 5,
            "graceful_timeout": GRACEFUL_S, "timeout": 60, "proc_name": "campus-web",
            "control_socket_disable": True,  # no control socket file: signals are the interface
            # gunicorn believes X-Forwarded-Proto from 127.0.0.1 by default: here only `campus web --proxy N`
            # decides whom to believe (dashboards/security.py), so gunicorn believes nobody.
            "forwarded_allow_ips": "",
            "accesslog": None, "errorlog": "-", "loglevel": "info",
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.build()


class _Arbiter(Arbiter):  # type: ignore[misc]
    tick: Callable[[], None] | None = None
    stopped_by: CampusError | None = None  # what `tick` raised: the reason the server halted

    # Ctrl-C stops as gracefully as SIGTERM (gunicorn's SIGINT would kill the workers' requests mid-way).
    def handle_int(self) -> None:
        self.handle_term()

    def manage_workers(self) -> None:
        """gunicorn's (keep the number of workers), then the server's own periodic check, on the arbiter's
        loop (it wakes at least once a second). What the check raises halts the whole server the way
        gunicorn halts itself (HaltServer: the workers stopped gracefully, as on SIGTERM, then a non-zero
        exit), not one worker that gunicorn would start again and again."""
        super().manage_workers()
        if self.tick is None or self.stopped_by is not None:
            return
        try:
            self.tick()
        except CampusError as exc:
            self.stopped_by = exc
            raise HaltServer(None, 2) from None  # the reason is said once, by `campus`, after the stop


class _Worker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker that ends the app's event streams when told to stop, and closes the app
    when its last request is done."""

    def init_process(self) -> None:
        # Pinned first, before the app is built: every thread the worker starts (Central's, the pool's, the
        # panel poller's) inherits the CPU; the fork left only this one.
        if self.app.pin:
            self._pin_to_cpu()
        super().init_process()

    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGINT, self.handle_exit)  # graceful, as the arbiter's

    def _pin_to_cpu(self) -> None:
        """Run this worker's threads on one CPU of those the process may use, worker N on the Nth (gunicorn
        numbers its workers from 1, a restarted one anew). Why: the threads of one interpreter take turns at
        its lock (the GIL); on two cores each hand-over wakes a thread on the other core while the one that let
        go spins back for the lock, and 500 panels opening at once spent half their CPU so (bench/panels.py:
        0.8-1.1 s of CPU and a median first event of 520-890 ms on 2 quiet cores, pinned 0.5 s and 310-360 ms,
        docs/benchmarks.md 10g). The worker uses one core's worth anyway; the other processes of the site
        (ingest, jobs, the database) are spread over the rest by the kernel, as ever. Threads started later
        (Central's, the pool's, the panel poller's) inherit the CPU. `campus web --no-pin` leaves it to the kernel."""
        allowed = sorted(os.sched_getaffinity(0))
        cpu = allowed[(self.age - 1) % len(allowed)]
        os.sched_setaffinity(0, {cpu})
        self.log.info("worker %s runs on CPU %s", self.pid, cpu)

    def _start_threads(self) -> None:
        """Start every thread of the request pool now, before the first request. The pool would start one
        per request that finds none idle, and the worker's one dispatching thread waits at each start until
        the new thread runs, which under 500 panels opening at once means waiting for the GIL once per
        panel: the burst's median first event was 100-150 ms later that way (bench/panels.py). An idle
        thread costs ~18 KB of RSS (1,000: 18 MB)."""
        gate = threading.Event()
        parked = [self.tpool.submit(gate.wait) for _ in range(self.cfg.threads)]
        gate.set()
        concurrent.futures.wait(parked)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        # Not in the signal handler itself: ending the streams takes their lock and joins the poller.
        threading.Thread(target=_end_streams, args=(self.wsgi,), name="streams-end", daemon=True).start()

    def run(self) -> None:
        # The app is built: what the start-up made (modules, the tables' metadata, catalogs, templates) lives
        # as long as the worker, so the collector stops walking it. Each full collection walked all of it
        # with the GIL held, 90-150 ms, several times while 500 panels opened (bench/panels.py: the web's
        # CPU to open them fell by a third).
        gc.freeze()
        self._start_threads()
        try:
            super().run()
        finally:
            from dashboards import close_app

            close_app(self.wsgi)


def _end_streams(app: Flask) -> None:
    """Run the app's closing hooks that end open streams (the panel's), before its requests are done."""
    from dashboards.context import web

    for hook in web(app).on_close:
        hook()


# ---------------------------------------------------------------- in a thread (the demo, tests)


@dataclass
class RunningServer:
    server: BaseWSGIServer
    thread: threading.Thread
    host: str
    port: int

    def shutdown(self) -> None:
        """Stop accepting, end the serving thread and close the listening socket; then close the app."""
        self.server.shutdown()
        self.thread.join(timeout=5)
        self.server.server_close()


def serve(app: Flask, host: str, port: int) -> RunningServer:
    """Serve `app` from a thread of this process (Werkzeug's threaded server): for the demo and tests."""
    # Bind the socket ourselves: Werkzeug prints to stderr and exits the whole
    # process when its own bind fails; we want one clear line instead.
    sock = listen(host, port)
    port = sock.getsockname()[1]
    try:
        server = make_server(host, port, app, threaded=True, fd=sock.fileno())
    finally:
        sock.close()  # Werkzeug listens on its own duplicate of the descriptor
    # Closing the server does not wait for request threads: a panel's event stream lasts until the app
    # closes (close_app ends every stream), any other request ends by itself, each giving its database
    # connections back (dashboards.release_connections, or the thread's end).
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    thread.start()
    return RunningServer(server, thread, host, port)
