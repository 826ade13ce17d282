"""TLS brokers for tests: certificates from broker_config/make-ca.sh, password files
from mosquitto_passwd, and a real Mosquitto running the production
broker_config/mosquitto.conf itself, with only its paths and ports changed.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

from campus.net import free_port
from central import broker_dynsec
from tests.e2e import Classroom
from tests.servers import CampusProcess, Mosquitto

REPO = Path(__file__).resolve().parents[1]
MAKE_CA = REPO / "broker_config" / "make-ca.sh"
PRODUCTION_CONF = REPO / "broker_config" / "mosquitto.conf"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def make_ca(out: Path, *args: str) -> Path:
    """Run make-ca.sh into `out` (reusing a CA already there); return `out`."""
    result = subprocess.run(["bash", str(MAKE_CA), "-o", str(out), *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"make-ca.sh failed:\n{result.stdout}\n{result.stderr}"
    return out


def write_passwd(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file (hashed by mosquitto_passwd) holding exactly `users`."""
    path.unlink(missing_ok=True)
    for i, (user, password) in enumerate(users.items()):
        subprocess.run([MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(path), user, password],
                       check=True, capture_output=True, timeout=30)
    return path


def password() -> str:
    return secrets.token_hex(12)


def mqtts(port: int, user: str, password: str, ca: Path, **query: Path) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"mqtts://{user}:{password}@127.0.0.1:{port}?ca={ca}{extra}"


class ProductionMosquitto(Mosquitto):
    """broker_config/mosquitto.conf, word for word but for paths and ports: the plain
    listener on 127.0.0.1:`port`, the TLS listener on 127.0.0.1:`tls_port`.

    Accounts: the dynamic-security plugin with `dynsec` (a dynamic-security.json), as
    shipped; or, with `passwd` and `acl`, the password and ACL files the conf's comment
    names as the model before (what an existing deployment still runs).

    `configure()` (re)writes the conf for the next `start()`, so a test can restart
    the broker with another certificate or password file.
    """

    def __init__(self, workdir: Path, *, cert: Path, key: Path, ca: Path, passwd: Path | None = None,
                 acl: Path | None = None, dynsec: Path | None = None, extra_conf: str = "") -> None:
        super().__init__(workdir)
        self.tls_port = free_port()
        self.confd = workdir / "conf.d"
        self.confd.mkdir(exist_ok=True)
        self.audit_log = workdir / "audit.log"
        self.configure(cert=cert, key=key, ca=ca, passwd=passwd, acl=acl, dynsec=dynsec, extra_conf=extra_conf)

    def configure(self, *, cert: Path, key: Path, ca: Path, passwd: Path | None = None, acl: Path | None = None,
                  dynsec: Path | None = None, extra_conf: str = "") -> None:
        assert (dynsec is None) != (passwd is None and acl is None), "give dynsec, or passwd and acl"
        text = PRODUCTION_CONF.read_text()
        plugin = "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so\n"
        plugin_file = "plugin_opt_config_file /etc/mosquitto/campus/dynamic-security.json\n"
        if dynsec is not None:
            accounts = {plugin: f"plugin {broker_dynsec.plugin_path()}\n",
                        plugin_file: f"plugin_opt_config_file {dynsec}\n"}
        else:
            accounts = {plugin: "", plugin_file: f"password_file {passwd}\nacl_file {acl}\n"}
        changes = {
            **accounts,
            "listener 1883 127.0.0.1": f"listener {self.port} 127.0.0.1",
            "listener 8883\n": f"listener {self.tls_port} 127.0.0.1\n",  # tests talk to 127.0.0.1 only
            "certfile /etc/mosquitto/campus/certs/server.crt": f"certfile {cert}",
            "keyfile /etc/mosquitto/campus/certs/server.key": f"keyfile {key}",
            "cafile /etc/mosquitto/campus/certs/ca.crt": f"cafile {ca}",
            "persistence_location /var/lib/mosquitto/": f"persistence_location {self.workdir}/",
            # As in tests/servers.py: a SIGKILLed broker keeps what it had a second ago.
            "autosave_interval 30": "autosave_interval 1",
            "log_dest file /var/log/mosquitto/mosquitto.log": f"log_dest file {self.audit_log}\nlog_dest stderr",
            "include_dir /etc/mosquitto/campus/conf.d": f"include_dir {self.confd}",
        }
        for old, new in changes.items():
            assert text.count(old) == 1, f"broker_config/mosquitto.conf no longer has {old!r} once"
            text = text.replace(old, new)
        # Run as whoever runs the tests (see tests/servers.py).
        user = f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        self.conf.write_text(user + text + extra_conf)

    def url_for(self, user: str, password: str, ca: Path | None = None, **query: Path) -> str:
        """mqtts:// to the TLS listener when `ca` is given, else mqtt:// to the loopback one."""
        if ca is None:
            return f"mqtt://{user}:{password}@127.0.0.1:{self.port}"
        return mqtts(self.tls_port, user, password, ca, **query)

    def audit(self) -> str:
        return self.audit_log.read_text(errors="replace") if self.audit_log.exists() else ""

    def output(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


class SplitClassroom(Classroom):
    """A Classroom whose agent and ingest talk to different brokers (or listeners)."""

    def __init__(self, tmp: Path, agent_mqtt: str, ingest_mqtt: str, **kwargs: Any) -> None:
        self.ingest_mqtt = ingest_mqtt
        super().__init__(tmp, agent_mqtt, **kwargs)

    def _ingest(self, index: int = 0) -> CampusProcess:
        proc = super()._ingest(index)
        proc.args[proc.args.index("--mqtt") + 1] = self.ingest_mqtt
        return proc
