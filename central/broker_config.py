"""Mosquitto files from the registry: password file, per-gateway ACL and a broker config.

`campus broker-config --out DIR` (and the provisioning page's button) write:

- `passwd`: Mosquitto `password_file` lines `username:$7$...` (PBKDF2-SHA512, the
  format `mosquitto_passwd` writes) for every registered gateway, with the hash
  stored in the registry, plus the `ingest` and `web` service accounts. Mode 0600.
- `acl`: one `user` block per account. A gateway may publish only under its own
  prefix (`state`, `telemetry/+`, `event/+`, `cmd/+/result`) and read only its own
  commands, its retained `config` and `ack`, and central's presence
  (`campus/v1/ingest/+`); `ingest` reads what ingest subscribes to and writes acks
  and its presence
  (Mosquitto checks read access on delivery with the real topic, so the MQTT 5
  `$share/GROUP/...` subscriptions of several ingest workers need no extra rule);
  `web` writes commands and configs of every gateway and reads command results.
- `mosquitto.conf`: the listener, `allow_anonymous false`, both files, and the
  deliberate queue limits of broker_config/mosquitto.conf.
- `service-accounts.txt` (mode 0600): the plain passwords of `ingest` and `web`,
  generated the first time and kept on later runs, so regenerating after a new
  gateway never breaks the running services.

On the district broker (`--district HOST:PORT`, the address school brokers
reach it at), also one `bridge-{school}` account per school of the registry,
whose ACL is exactly what broker_config/bridge.conf.template forwards (a
gateway's rules with `+` for the gateway), its password kept in
`service-accounts.txt` like the services', and `bridges/bridge-{school}.conf`
(mode 0600): the template filled in, to copy to that school's broker.

Every file is written atomically (temp file in the same directory, fsync,
rename), so Mosquitto reloading on SIGHUP never reads half a file. Topic
filters are derived from `campus.contract`, the one place that spells topics.
"""

from __future__ import annotations

import io
import os
import pwd
import secrets
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

import broker_config as shipped_broker_config
from campus import contract
from campus.errors import ConfigError, PayloadError
from central.registry import Gateway, Registry, School, mosquitto_password_hash

SERVICE_ACCOUNTS = ("ingest", "web")
SERVICE_FILE = "service-accounts.txt"
PASSWD_FILE = "passwd"
ACL_FILE = "acl"
CONF_FILE = "mosquitto.conf"
BRIDGES_DIR = "bridges"
BRIDGE_TEMPLATE = shipped_broker_config.FILES / "bridge.conf.template"
# Where a school broker keeps the CA that signed the district's certificate (broker_config/README.md layout).
DEFAULT_DISTRICT_CA = "/etc/mosquitto/campus/certs/ca.crt"

# A valid topic segment that stands for "any" while a topic is built by the
# contract's own functions; it is then replaced by the MQTT wildcard `+`.
_ANY = "0any0"


def _wild(topic: str) -> str:
    return "/".join("+" if part == _ANY else part for part in topic.split("/"))


def gateway_rules(school: str, gateway: str) -> list[tuple[str, str]]:
    """(access, topic filter) pairs of one gateway: its own prefix only."""
    return [
        ("write", contract.state_topic(school, gateway)),
        ("write", _wild(contract.telemetry_topic(school, gateway, _ANY))),
        ("write", _wild(contract.event_topic(school, gateway, _ANY))),
        ("write", _wild(contract.cmd_result_topic(school, gateway, _ANY))),
        ("read", contract.agent_cmd_filter(school, gateway)),
        ("read", contract.config_topic(school, gateway)),
        # Central's acknowledgement to this gateway, and central's presence (every ingest worker's).
        ("read", contract.ack_topic(school, gateway)),
        ("read", contract.ingest_states_filter()),
    ]


def bridge_account(school: str) -> str:
    return f"bridge-{school}"


def bridge_rules(school: str) -> list[tuple[str, str]]:
    """A school's bridge on the district broker: what every gateway of the school may do, and no more.

    All of what the bridge forwards must be granted: Mosquitto closes a connection after a
    refused QoS 1 publish, and the bridge would resend that message forever."""
    return [(access, _wild(topic)) for access, topic in gateway_rules(school, _ANY)]


def _is_account(name: str) -> bool:
    if name in SERVICE_ACCOUNTS:
        return True
    school = name.removeprefix("bridge-")
    try:
        return school != name and bool(contract.check_segment(school, "school"))
    except PayloadError:
        return False


def service_rules(account: str) -> list[tuple[str, str]]:
    if account == "ingest":
        # Exactly what central ingest subscribes to (plain or as $share/GROUP/...); and what it
        # publishes: each worker's presence and the acknowledgements to the gateways.
        return [*(("read", f) for f in contract.ingest_filters()),
                ("write", contract.ingest_states_filter()),
                ("write", _wild(contract.ack_topic(_ANY, _ANY)))]
    if account == "web":
        return [("write", _wild(contract.cmd_topic(_ANY, _ANY, _ANY))),
                ("write", _wild(contract.config_topic(_ANY, _ANY))),
                ("read", _wild(contract.cmd_result_topic(_ANY, _ANY, _ANY)))]
    raise ConfigError(f"no service account {account!r}; known: {', '.join(SERVICE_ACCOUNTS)}")


@dataclass
class BrokerFiles:
    """The generated files' text, and what went into them."""
    passwd: str
    acl: str
    conf: str
    service_accounts: str
    passwords: dict[str, str]
    gateways: list[str] = field(default_factory=list)
    new_service_passwords: bool = False
    bridges: dict[str, str] = field(default_factory=dict)  # school -> its bridge-{school}.conf

    def as_dict(self) -> dict[str, str]:
        return {PASSWD_FILE: self.passwd, ACL_FILE: self.acl, CONF_FILE: self.conf, SERVICE_FILE: self.service_accounts,
                **{f"{BRIDGES_DIR}/{bridge_account(school)}.conf": text for school, text in self.bridges.items()}}


def read_service_passwords(path: Path) -> dict[str, str]:
    """`ACCOUNT PASSWORD` lines of an existing service-accounts file ({} if there is none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, password = line.partition(" ")
        if not _is_account(name) or not password.strip():
            raise ConfigError(f"{path}:{number}: expected 'ACCOUNT PASSWORD' with ACCOUNT one of "
                              f"{', '.join(SERVICE_ACCOUNTS)} or bridge-SCHOOL")
        out[name] = password.strip()
    return out


def _check_password(account: str, password: str) -> str:
    if len(password) < 12 or any(c in password for c in ":@/ \t\r\n"):
        raise ConfigError(f"service account {account}: a password needs at least 12 characters and no "
                          "':', '@', '/' or spaces (it goes into an mqtt:// URL)")
    return password


def render(registry: Registry, *, out_dir: Path, passwords: dict[str, str] | None = None,
           listen: tuple[str, int] = ("127.0.0.1", 1883), persistence_dir: str = "/var/lib/mosquitto",
           district: tuple[str, int] | None = None, district_ca: str = DEFAULT_DISTRICT_CA) -> BrokerFiles:
    """The files' text. Service passwords: `passwords`, else the ones in `out_dir`, else new ones.

    `district`: this is the district broker, reached by school brokers at (host, TLS port):
    add a bridge account and a bridge conf per school."""
    out_dir = out_dir.resolve()
    known = read_service_passwords(out_dir / SERVICE_FILE)
    given = dict(passwords or {})
    final: dict[str, str] = {}
    new = False
    schools: list[str] = []
    if district is not None:
        with registry.session() as s:
            schools = list(s.scalars(select(School.id).order_by(School.id)))
    accounts = [*SERVICE_ACCOUNTS, *map(bridge_account, schools)]
    for account in accounts:
        if account in given:
            final[account] = _check_password(account, given[account])
        elif account in known:
            final[account] = known[account]
        else:
            final[account] = secrets.token_urlsafe(18)
            new = True
    gateways = registry.gateways()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    header = f"# Generated by `campus broker-config` from the registry on {stamp}. Do not edit: regenerate.\n"

    hashes = _gateway_hashes(registry)
    passwd = [header.rstrip("\n")]
    for gw in gateways:
        passwd.append(f"{gw['mqtt_username']}:{hashes[gw['id']]}")
    for account in accounts:
        passwd.append(f"{account}:{mosquitto_password_hash(final[account])}")

    acl = [header.rstrip("\n"),
           "# No rule before the first `user` line: anonymous clients (refused anyway) get nothing.", ""]
    for account in SERVICE_ACCOUNTS:
        acl += _acl_block(f"service account: {account}", account, service_rules(account))
    for school in schools:
        acl += _acl_block(f"the bridge from school {school}'s broker (bridges/{bridge_account(school)}.conf)",
                          bridge_account(school), bridge_rules(school))
    for gw in gateways:
        where = " / ".join(x for x in (gw["school"], gw["building"], gw["room"]) if x)
        acl += _acl_block(f"gateway {gw['id']} ({where})", gw["mqtt_username"], gateway_rules(gw["school"], gw["id"]))

    host, port = listen
    conf = (
        header
        + f"# {len(gateways)} gateways, service accounts {', '.join(SERVICE_ACCOUNTS)}"
        + (f", bridges of {len(schools)} schools" if district else "") + ".\n"
        "# Apply changes with a reload (SIGHUP: `systemctl reload mosquitto`); clients stay connected.\n"
        "# When Mosquitto starts as root it drops to the `mosquitto` user: give that user read\n"
        "# access to passwd and acl (`campus broker-config --owner mosquitto`).\n"
        "per_listener_settings false\n"
        f"listener {port} {host}\n"
        "allow_anonymous false\n"
        f"password_file {out_dir / PASSWD_FILE}\n"
        f"acl_file {out_dir / ACL_FILE}\n"
        "\n"
        "persistence true\n"
        f"persistence_location {persistence_dir.rstrip('/')}/\n"
        "autosave_interval 30\n"
        "\n"
        "# Deliberate queue limits (see broker_config/mosquitto.conf): never drop QoS 1\n"
        "# messages of a slow ingest session by count; bound the memory instead.\n"
        "max_queued_messages 0\n"
        "max_queued_bytes 1073741824\n"
        "max_inflight_messages 100\n"
        "persistent_client_expiration 14d\n"
        "# The contract caps a payload at 64 KiB: a much larger packet is not ours.\n"
        "max_packet_size 262144\n"
        "# Commands and results are small packets: send them at once (no Nagle delay).\n"
        "set_tcp_nodelay true\n"
        "connection_messages true\n"
    )
    service = (
        "# MQTT service accounts of campus-iot, generated by `campus broker-config`. KEEP SECRET.\n"
        "# Use them in the --mqtt URL of the central programs, for example:\n"
        "#   campus ingest --mqtt mqtt://ingest:PASSWORD@BROKER:1883 ...\n"
        "#   campus web    --mqtt mqtt://web:PASSWORD@BROKER:1883 ...\n"
        "# Later runs keep these passwords; delete a line to get a new one.\n"
        + "".join(f"{account} {final[account]}\n" for account in accounts)
    )
    bridges = {}
    if district is not None:
        template = read_bridge_template()
        for school in schools:
            bridges[school] = template.format(school=school, district_host=district[0], district_port=district[1],
                                              district_ca=district_ca, bridge_user=bridge_account(school),
                                              bridge_password=final[bridge_account(school)])
    return BrokerFiles(passwd="\n".join(passwd) + "\n", acl="\n".join(acl), conf=conf, service_accounts=service,
                       passwords=final, gateways=[g["id"] for g in gateways], new_service_passwords=new,
                       bridges=bridges)


def _acl_block(comment: str, user: str, rules: list[tuple[str, str]]) -> list[str]:
    """One account's lines in the ACL file, then a blank line."""
    return [f"# {comment}", f"user {user}", *(f"topic {access} {topic}" for access, topic in rules), ""]


def read_bridge_template() -> str:
    try:
        return BRIDGE_TEMPLATE.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{BRIDGE_TEMPLATE}: cannot read the bridge template ({exc.strerror or exc}); "
                          "reinstall campus-iot") from None


def _gateway_hashes(registry: Registry) -> dict[str, str]:
    """The stored Mosquitto hash of every gateway (the registry never keeps the plain password)."""
    with registry.session() as s:
        rows = s.execute(select(Gateway.id, Gateway.mqtt_password_hash)).all()
    for gateway, digest in rows:
        if not digest.startswith("$7$"):
            raise ConfigError(f"gateway {gateway}: stored password hash is not in Mosquitto's $7$ format")
    return dict(rows)


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    """Write `path` so a reader sees the old file or the new one, never a part; with `mode` (and `owner`)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fchmod(f.fileno(), mode)  # whatever the umask
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


FILE_MODES = {PASSWD_FILE: 0o600, ACL_FILE: 0o640, CONF_FILE: 0o644, SERVICE_FILE: 0o600}


def file_mode(name: str) -> int:
    return FILE_MODES.get(name, 0o600)  # bridges/*.conf hold a bridge's password


def write(registry: Registry, out_dir: str | Path, *, owner: str | None = None, **options: object) -> BrokerFiles:
    """Render and write every file into `out_dir` (created if missing).

    `owner`: the user Mosquitto runs as (e.g. `mosquitto`), given the passwd and acl
    files so it can read them after dropping root (needs root to change owners).
    """
    out = Path(out_dir)
    ids = None
    if owner:
        try:
            entry = pwd.getpwnam(owner)
        except KeyError:
            raise ConfigError(f"--owner {owner!r}: no such user") from None
        ids = (entry.pw_uid, entry.pw_gid)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the directory ({exc.strerror or exc})") from None
    files = render(registry, out_dir=out, **options)  # type: ignore[arg-type]
    try:
        if files.bridges:
            (out / BRIDGES_DIR).mkdir(mode=0o700, exist_ok=True)
        for name, text in files.as_dict().items():
            atomic_write(out / name, text, file_mode(name), ids if name in (PASSWD_FILE, ACL_FILE) else None)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write the broker files ({exc.strerror or exc})") from None
    return files


def zip_bundle(files: BrokerFiles) -> bytes:
    """The files as one zip (download from the web page instead of writing a directory)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.as_dict().items():
            info = zipfile.ZipInfo(f"campus-broker/{name}", time.localtime()[:6])
            info.external_attr = (0o100000 | file_mode(name)) << 16
            z.writestr(info, text)
    return buf.getvalue()


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or just `PORT`) of the generated listener."""
    return _host_port(text, "--listen", "0.0.0.0:1883", default_host="0.0.0.0")


def parse_district(text: str) -> tuple[str, int]:
    """`HOST:PORT` at which school brokers reach the district broker's TLS listener."""
    host, port = _host_port(text, "--district", "mqtt.district.example:8883")
    if not host:
        raise ConfigError(f"--district {text!r}: name the host school brokers connect to, e.g. "
                          "mqtt.district.example:8883")
    return host, port


def _host_port(text: str, option: str, example: str, default_host: str = "") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{option} {text!r}: write HOST:PORT, e.g. {example}") from None
    if not 0 < number < 65536:
        raise ConfigError(f"{option} {text!r}: port must be 1-65535")
    return host.strip("[]") or default_host, number
