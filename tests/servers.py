"""Real servers for tests: Mosquitto, VictoriaMetrics, InfluxDB and PostgreSQL on ephemeral loopback ports,
and the project's own programs as subprocesses (`campus agent`, `campus ingest`, ...).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from campus.net import free_port, wait_for_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
VICTORIA = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
INFLUXD = shutil.which("influxd") or "/usr/bin/influxd"
POSTGRES_HINT = "run scripts/test once: it installs Debian's postgresql (tests run their own server, never the system one)"


def screenshot_path(name: str, tmp_path: Path) -> Path:
    """Where a browser test saves its screenshot: the test's own directory, so a test run changes no tracked
    file. The README's pictures (docs/screenshots/) are made by scripts/screenshots.py, in Chinese, and
    nowhere else."""
    return tmp_path / name


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> object:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last failure
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


class ServerProcess:
    """A process run by a test (a server binary or `campus ...`): SIGKILL it (no goodbye, no
    final save) or stop it politely (SIGTERM, SIGKILL after `stop_timeout`)."""

    proc: subprocess.Popen[Any] | None = None
    stop_timeout = 10.0

    def start(self) -> object:
        raise NotImplementedError  # each server knows its own command line

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc and self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int | None:
        """Stop it; its exit status (None if it never ran)."""
        if self.proc and self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        return self.proc.returncode if self.proc else None


class Mosquitto(ServerProcess):
    """A real Mosquitto on 127.0.0.1:port with persistence, so it can be killed and restarted."""

    def __init__(self, workdir: Path, extra_conf: str = "") -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # Run as whoever started the test (root in CI): the default drops to the
            # `mosquitto` user, which cannot write its persistence file in our tmp dir.
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            # No silent drops: queue without limit for slow or offline persistent sessions.
            "max_queued_messages 0\n"
            "max_inflight_messages 100\n"
            "set_tcp_nodelay true\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n"
            + extra_conf)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log, stderr=self.log)
        wait_for_port("127.0.0.1", self.port, timeout=10)

    def restart_empty(self, down_s: float = 0.0) -> None:
        """SIGKILL it and start it again, after `down_s`, without its saved state: a crashed broker host
        replaced by a fresh one, a corrupt persistence file, a kill inside `autosave_interval`. Sessions,
        queues and retained messages are gone, as with `persistence false`."""
        self.kill()
        (self.workdir / "mosquitto.db").unlink(missing_ok=True)
        if down_s:
            time.sleep(down_s)  # the outage itself, not synchronisation
        self.start()


class VictoriaMetrics(ServerProcess):
    stop_timeout = 15.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"victoriametrics://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log = open(self.workdir / "vm.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([VICTORIA, f"-storageDataPath={self.workdir / 'vmdata'}",
                                      f"-httpListenAddr=127.0.0.1:{self.port}", "-search.latencyOffset=0s",
                                      "-loggerLevel=ERROR"], stdout=self.log, stderr=self.log)
        wait_for_port("127.0.0.1", self.port, timeout=20)


class InfluxDB(ServerProcess):
    """A real InfluxDB 1.x (Debian's `influxdb`) with its own data directories and database `campus`."""

    stop_timeout = 15.0

    def __init__(self, workdir: Path, database: str = "campus", admin_password: str | None = None) -> None:
        """With `admin_password`, authentication is on and the first user, `admin`, has that password."""
        self.workdir = workdir
        self.database = database
        self.admin_password = admin_password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "influxdb.conf"
        self.conf.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{free_port()}"\n'
            f'[meta]\n  dir = "{workdir}/influx-meta"\n'
            f'[data]\n  dir = "{workdir}/influx-data"\n  wal-dir = "{workdir}/influx-wal"\n'
            "  query-log-enabled = false\n"
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            f"  auth-enabled = {'true' if admin_password else 'false'}\n"
            "[monitor]\n  store-enabled = false\n")

    @property
    def url(self) -> str:
        return f"influxdb://127.0.0.1:{self.port}?bucket={self.database}"

    def start(self) -> None:
        self.log = open(self.workdir / "influxd.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([INFLUXD, "run", "-config", str(self.conf)], stdout=self.log, stderr=self.log)
        wait_for_port("127.0.0.1", self.port, timeout=20)
        if self.admin_password:  # with authentication on, InfluxDB 1.x lets anyone create the first admin only
            self.influxql(f"CREATE USER admin WITH PASSWORD '{self.admin_password}' WITH ALL PRIVILEGES", auth=False)
        self.influxql(f'CREATE DATABASE "{self.database}"')  # idempotent

    def influxql(self, statement: str, auth: bool = True) -> dict[str, Any]:
        """Run one statement over the server's own HTTP API (set-up and checks, not the code under test)."""
        body = urllib.parse.urlencode({"q": statement, "db": self.database, "epoch": "ms"}).encode()
        credentials = urllib.parse.urlencode({"u": "admin", "p": self.admin_password or ""})  # read from the URL only
        url = f"http://127.0.0.1:{self.port}/query" + (f"?{credentials}" if auth and self.admin_password else "")
        with urllib.request.urlopen(url, data=body, timeout=10) as resp:
            return json.loads(resp.read())["results"][0]


def postgres_bindir() -> Path:
    """The newest Debian PostgreSQL's bin directory (/usr/lib/postgresql/N/bin); a clear error without one."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if not found:
        raise FileNotFoundError(f"no PostgreSQL in /usr/lib/postgresql/*/bin: {POSTGRES_HINT}")
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


class PostgreSQL(ServerProcess):
    """A PostgreSQL server of its own in `workdir`, on 127.0.0.1:port only, never the system cluster.

    As root it runs as the `postgres` user (postgres refuses root), so `workdir` must be one that
    user can reach: by default a fresh directory in /tmp, not pytest's tmp_path (it lies under a
    root-only 0700 directory).
    Authentication is scram-sha-256 with the superuser `postgres` and a random password, on TCP and on
    the unix socket alike (which lives in `workdir`): a test that forgets the password fails as it would
    in production. fsync and full_page_writes are off: a SIGKILL still keeps every committed row (the
    WAL reached the OS page cache), only a power cut would not, and tests have none. synchronous_commit
    stays on: off, a commit returns before its WAL leaves the server's shared memory, and a SIGKILL loses
    the last ~0.5 s of "committed" transactions (measured: a table created and committed just before the
    kill was gone after the restart), which would make every kill-and-restart test a lie.
    """

    stop_timeout = 30.0
    _NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

    def __init__(self, workdir: Path | None = None, *, max_connections: int = 100) -> None:
        """Without `workdir`, a fresh one in the system's temp directory, which `remove` deletes."""
        self.bindir = postgres_bindir()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="campus-pg-"))
        self.data = self.workdir / "data"
        self.port = free_port()
        self.user = "postgres"
        self.password = secrets.token_hex(16)  # hex: nothing to escape in a URL
        self.max_connections = max_connections
        self.proc: subprocess.Popen[bytes] | None = None
        self.initdb_s: float | None = None
        self.start_s: float | None = None
        # Root must drop to `postgres` (Debian's package makes that user); anyone else runs it as themselves.
        try:
            self._as = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        except KeyError:
            raise FileNotFoundError(f"no `postgres` user to run PostgreSQL as: {POSTGRES_HINT}") from None

    def _run_as(self) -> dict[str, Any]:
        """Popen arguments that run the child as the postgres user, in its own session (so `kill` takes
        the postmaster and every backend at once)."""
        extra: dict[str, Any] = {"start_new_session": True}
        if self._as:
            extra.update(user=self._as.pw_uid, group=self._as.pw_gid, extra_groups=[])
        return extra

    def _own(self, path: Path) -> None:
        if self._as:
            os.chown(path, self._as.pw_uid, self._as.pw_gid)

    def initdb(self) -> None:
        """Make the cluster (a few seconds): UTF-8, C locale, a superuser password, our settings."""
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        self._own(self.workdir)
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._own(pwfile)
        result = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, env=self._env(), **self._run_as())
        pwfile.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        # Our own pg_hba.conf: password (SCRAM) everywhere, no `trust`, TCP from 127.0.0.1 only.
        (self.data / "pg_hba.conf").write_text(
            "local all all scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# campus-iot tests\n"
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.workdir}'\n"
                f"max_connections = {self.max_connections}\n"
                # Small and fast: two cores shared with other tests; durable up to the OS cache, not the disk.
                "shared_buffers = 16MB\n"
                "fsync = off\nfull_page_writes = off\n"
                "wal_level = minimal\nmax_wal_senders = 0\n"
                "logging_collector = off\n")
        self.initdb_s = time.monotonic() - started

    def _env(self) -> dict[str, str]:
        # No PG* variable of the caller's (PGDATA, PGPORT, ...) may steer our server to the system cluster.
        return {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}

    def dsn(self, dbname: str = "postgres", password: str | None = None) -> str:
        """A libpq URL, for psycopg itself."""
        return f"postgresql://{self.user}:{password or self.password}@127.0.0.1:{self.port}/{dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """A SQLAlchemy URL (`postgresql+psycopg://`), what `--db` and CAMPUS_DB take."""
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def start(self, timeout: float = 60.0) -> None:
        """Start the postmaster (initdb first if there is no cluster yet) and wait until it accepts a login."""
        if not (self.data / "PG_VERSION").exists():
            self.initdb()
        started = time.monotonic()
        if getattr(self, "log", None):
            self.log.close()  # the previous run's, after a `kill`
        self.log = open(self.workdir / "postgres.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([str(self.bindir / "postgres"), "-D", str(self.data)], stdout=self.log,
                                     stderr=self.log, env=self._env(), **self._run_as())
        wait_until(lambda: not self.alive() or self._accepts(), timeout=timeout,
                   message=f"PostgreSQL on 127.0.0.1:{self.port} to accept connections")
        if not self.alive():
            raise RuntimeError(f"postgres exited with {self.proc.returncode}: {self.log_tail()}")
        self.start_s = time.monotonic() - started

    def _accepts(self) -> bool:
        import psycopg  # here, so that a run with no PostgreSQL test never imports it

        with psycopg.connect(self.dsn(), connect_timeout=2):
            return True

    def log_tail(self, chars: int = 2000) -> str:
        path = self.workdir / "postgres.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> int | None:
        """Fast shutdown (SIGINT): roll back open transactions, disconnect clients, checkpoint, exit.
        (SIGTERM, ServerProcess's way, is the *smart* shutdown that waits for every client to leave.)"""
        if self.proc and self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "log", None):
            self.log.close()
        return self.proc.returncode if self.proc else None

    def kill(self) -> None:
        """SIGKILL the postmaster and, at the same instant, its backends (its process group): a crashed
        host. Killing the postmaster alone leaves orphan backends that may still commit and that hold
        the shared memory, so a restart would be refused until they noticed and left."""
        if self.proc and self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            wait_until(lambda: not self._group_alive(), timeout=10, message="the killed PostgreSQL's backends to go")

    def _group_alive(self) -> bool:
        """Whether a process of the server's group still runs. Zombies do not count: they hold no shared
        memory, and who reaps the orphaned backends (PID 1 of a container) may be slow or never do it."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
            except OSError:
                continue  # gone meanwhile
            if int(fields[2]) == self.proc.pid and fields[0] != "Z":  # type: ignore[union-attr]
                return True
        return False

    def restart(self) -> None:
        """Stop it (fast) if it runs, then start it again on the same data directory and port. After `kill`
        the start is a crash recovery (WAL replay)."""
        self.stop()
        self.start()

    def remove(self) -> None:
        """Stop it and delete its directory (data, socket, log)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _admin(self, statement: Any) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)

    def _identifier(self, name: str) -> Any:
        from psycopg import sql

        if not self._NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _, at most 63")
        return sql.Identifier(name)

    def create_database(self, name: str) -> str:
        """A fresh, empty database `name`; its SQLAlchemy URL."""
        from psycopg import sql

        self._admin(sql.SQL("CREATE DATABASE {}").format(self._identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop it, closing any connection a test left open (WITH (FORCE)); nothing if it is not there."""
        from psycopg import sql

        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(self._identifier(name)))


class CampusProcess(ServerProcess):
    """`campus ARGS...` as a real subprocess, logging to a file; with `open_files`, under that soft
    limit of open files (RLIMIT_NOFILE), as a service manager would run it (systemd's default is 1,024);
    with `cwd`, in that working directory (a host of its own: `campus web` on a server database writes
    its first admin password where it was started)."""

    stop_timeout = 15.0

    def __init__(self, args: list[str], log_path: Path, *, open_files: int | None = None,
                 cwd: Path | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.open_files = open_files
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def _limit_open_files(self) -> None:
        """Runs in the child between fork and exec."""
        if self.open_files is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    def start(self) -> CampusProcess:
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "programs.cli", *self.args], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
                                     preexec_fn=self._limit_open_files if self.open_files is not None else None)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, port: int, timeout: float = 30.0) -> None:
        """Until it accepts connections on 127.0.0.1:port. If it exits first, or is still not listening at
        the deadline, raise with the end of its log; a process that hangs is first asked for its threads'
        stacks (SIGUSR1: `campus` registers faulthandler for it), so the log says where it waits."""
        deadline = time.monotonic() + timeout
        while self.alive():
            try:
                wait_for_port("127.0.0.1", port, timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    break
        if self.alive():
            size = self.log_path.stat().st_size
            self.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: self.log_path.stat().st_size > size, timeout=5, message="the stack dump")
            why = f"still not listening on 127.0.0.1:{port} after {timeout:.0f} s"
        else:
            why = f"exited with {self.proc.returncode if self.proc else None} before listening on {port}"
        raise RuntimeError(f"campus {' '.join(self.args[:1])}: {why}; its log ends:\n{self.output()[-6000:]}")


class EventStream:
    """A server-sent event stream read over a plain socket (the panel's `/api/panel/<gateway>/stream`), as
    a browser's EventSource reads it: many can be open at once in one thread, each read has a deadline."""

    def __init__(self, port: int, path: str, token: str, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        import socket

        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        self.buf = b""
        head = self._until(b"\r\n\r\n", timeout).decode("latin-1")
        self.status = int(head.split(" ", 2)[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in
                        (line.partition(":") for line in head.splitlines()[1:])}
        # Chunked transfer (HTTP/1.1) or the body until the end (HTTP/1.0): read the payload out of the chunks.
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        self.body = b""

    def _recv(self, timeout: float) -> bytes:
        self.sock.settimeout(max(0.001, timeout))
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server ended the stream")
        return data

    def _until(self, mark: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while mark not in self.buf:
            self.buf += self._recv(deadline - time.monotonic())
        out, self.buf = self.buf.split(mark, 1)
        return out

    def _more_body(self, timeout: float) -> None:
        if not self.chunked:
            self.body += self.buf or self._recv(timeout)
            self.buf = b""
            return
        size = int(self._until(b"\r\n", timeout).split(b";")[0], 16)
        if size == 0:
            raise EOFError("the server ended the stream")
        deadline = time.monotonic() + timeout
        while len(self.buf) < size + 2:
            self.buf += self._recv(deadline - time.monotonic())
        self.body += self.buf[:size]
        self.buf = self.buf[size + 2:]

    def block(self, timeout: float = 30.0) -> str:
        """The next block of the stream (an event, a comment, a `retry:`), without its blank line."""
        deadline = time.monotonic() + timeout
        while b"\n\n" not in self.body:
            self._more_body(deadline - time.monotonic())
        block, self.body = self.body.split(b"\n\n", 1)
        return block.decode()

    def event(self, timeout: float = 30.0) -> tuple[str, dict[str, Any]]:
        """The next event (skipping `retry:` and comments): its name and JSON data."""
        deadline = time.monotonic() + timeout
        while True:
            fields = dict(line.split(": ", 1) for line in self.block(deadline - time.monotonic()).splitlines()
                          if ": " in line and not line.startswith(":"))
            if "data" in fields:
                return fields.get("event", "message"), json.loads(fields["data"])

    def close(self) -> None:
        self.sock.close()


class SmallFilesystem:
    """A real filesystem of `size` bytes (tmpfs) mounted at `path`: a disk that fills up, or a read-only one.

    Needs root (mount(8)); `available()` says whether this machine allows it, and the fixtures skip
    otherwise. `fill()` writes a ballast file until the kernel answers ENOSPC, exactly as a gateway's
    card fills up; `free()` deletes it. Always unmounted at the end (lazily if a test left a file open)."""

    def __init__(self, path: Path, size: int = 8 * 1024 * 1024, *, read_only: bool = False) -> None:
        self.path = path
        self.size = size
        self.read_only = read_only
        self.ballast = path / "ballast"
        self.mounted = False

    @staticmethod
    def available() -> str | None:
        """None if tests can mount here, else why not."""
        if os.geteuid() != 0:
            return "needs root to mount a small filesystem"
        if not shutil.which("mount"):
            return "no mount(8)"
        return None

    def mount(self) -> SmallFilesystem:
        self.path.mkdir(parents=True, exist_ok=True)
        opts = f"size={self.size}" + (",ro" if self.read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(self.path)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise RuntimeError(f"mount tmpfs at {self.path}: {result.stderr.strip()}")
        self.mounted = True
        return self

    def fill(self) -> int:
        """Take every free byte; returns how many were written."""
        written = 0
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (b"\0" * (1 << 16), b"\0" * 512, b"\0"):
                try:
                    while True:
                        written += os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != 28:  # ENOSPC
                        raise
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def umount(self) -> None:
        if self.mounted:
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless, driven by Playwright (which must never download a browser of its own)."""
    return playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
