"""Real servers for tests: Mosquitto, VictoriaMetrics and InfluxDB on ephemeral loopback ports,
and the project's own programs as subprocesses (`campus agent`, `campus ingest`, ...).
"""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import subprocess
import sys
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


def screenshot_path(name: str, tmp_path: Path) -> Path:
    """Where a browser test saves its screenshot: docs/screenshots/NAME when UPDATE_SCREENSHOTS=1
    (to refresh the README's pictures), else the test's own directory, so a test run changes no tracked file."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        folder = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name
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


class CampusProcess(ServerProcess):
    """`campus ARGS...` as a real subprocess, logging to a file; with `open_files`, under that soft
    limit of open files (RLIMIT_NOFILE), as a service manager would run it (systemd's default is 1,024)."""

    stop_timeout = 15.0

    def __init__(self, args: list[str], log_path: Path, *, open_files: int | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.open_files = open_files
        self.proc: subprocess.Popen[bytes] | None = None

    def _limit_open_files(self) -> None:
        """Runs in the child between fork and exec."""
        if self.open_files is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    def start(self) -> CampusProcess:
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "campus.cli", *self.args], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=self._limit_open_files if self.open_files is not None else None)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


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
