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
- `dynamic-security.json` (mode 0600): the same accounts and rules for Mosquitto's
  dynamic-security plugin, with every gateway and bridge account bound to its own
  client id, so no account can connect as another client and take over its session
  (central/broker_dynsec.py says why, and what Mosquitto offers). Also a `broker-admin`
  account for the plugin's `$CONTROL` topics.
- `mosquitto.conf`: the listener, `allow_anonymous false`, the plugin with
  dynamic-security.json (`auth="dynsec"`, the default) or the password and ACL files
  (`auth="files"`, the model before client ids were bound), and the deliberate queue
  limits of broker_config/mosquitto.conf.
- `service-accounts.txt` (mode 0600): the plain passwords of `ingest`, `web` and
  `broker-admin`, generated the first time and kept on later runs, so regenerating
  after a new gateway never breaks the running services.

On the district broker (`--district HOST:PORT`, the address school brokers
reach it at), also one `bridge-{school}` account per school of the registry,
whose ACL is exactly what broker_config/bridge.conf.template forwards (a
gateway's rules with `+` for the gateway), its password kept in
`service-accounts.txt` like the services', and `bridges/bridge-{school}.conf`
(mode 0600): the template filled in, to copy to that school's broker.

Every file is written atomically (temp file in the same directory, fsync,
rename), so Mosquitto reloading on SIGHUP never reads half a file. Topic
filters are derived from `campus.contract`, the one place that spells topics.

Mosquitto reads these files a line at a time and has no escaping at all: a
value holding a line end would be a directive of its own (issue 15: a room name
became `user ...` and `topic readwrite #` lines). So no display name (room,
building, school name) goes into any of them, not even into a comment; and
every value that does (ids, account names, hashes, passwords, paths, hosts) is
checked again here, whatever the registry holds: a record that fails is refused
with a ConfigError naming it, and nothing is written.
"""

from __future__ import annotations

import io
import os
import pwd
import re
import secrets
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

import broker_config as shipped_broker_config
from campus import contract, names
from campus.errors import ConfigError, PayloadError
from central import broker_dynsec
from central.registry import Gateway, Registry, School, mosquitto_password_hash

SERVICE_ACCOUNTS = ("ingest", "web")
# Administers the dynamic-security plugin over $CONTROL (mosquitto_ctrl); in dynamic-security.json only.
ADMIN_ACCOUNT = "broker-admin"
AUTH_MODELS = ("dynsec", "files")
SERVICE_FILE = "service-accounts.txt"
PASSWD_FILE = "passwd"
ACL_FILE = "acl"
CONF_FILE = "mosquitto.conf"
DYNSEC_FILE = broker_dynsec.DYNSEC_FILE
BRIDGES_DIR = "bridges"
BRIDGE_TEMPLATE = shipped_broker_config.FILES / "bridge.conf.template"
# Where a school broker keeps the CA that signed the district's certificate (broker_config/README.md layout).
DEFAULT_DISTRICT_CA = "/etc/mosquitto/campus/certs/ca.crt"

# What an account name or a stored hash may be to go into passwd and acl: `user NAME` takes the rest of
# the line and `NAME:HASH` splits at the first ':', so no blank, ':' or line end; every name we make fits.
_ACCOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_MOSQUITTO_HASH = re.compile(r"^\$7\$[0-9]{1,9}\$[A-Za-z0-9+/]{1,200}={0,2}\$[A-Za-z0-9+/]{1,200}={0,2}$")
_HOST = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")

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


def bridge_client_id(school: str) -> str:
    """The client id of a school's bridge on the district broker (the template's `remote_clientid`)."""
    return f"bridge-{school}"


def bridge_rules(school: str) -> list[tuple[str, str]]:
    """A school's bridge on the district broker: what every gateway of the school may do, and no more.

    All of what the bridge forwards must be granted: Mosquitto closes a connection after a
    refused QoS 1 publish, and the bridge would resend that message forever."""
    return [(access, _wild(topic)) for access, topic in gateway_rules(school, _ANY)]


def _is_account(name: str) -> bool:
    if name in SERVICE_ACCOUNTS or name == ADMIN_ACCOUNT:
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
    new_accounts: list[str] = field(default_factory=list)  # those whose passwords were made by this run
    bridges: dict[str, str] = field(default_factory=dict)  # school -> its bridge-{school}.conf
    dynsec: str = ""  # dynamic-security.json
    auth: str = "dynsec"  # which of the two the conf uses

    def as_dict(self) -> dict[str, str]:
        return {PASSWD_FILE: self.passwd, ACL_FILE: self.acl, DYNSEC_FILE: self.dynsec, CONF_FILE: self.conf,
                SERVICE_FILE: self.service_accounts,
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
        password = password.strip()
        if not _is_account(name) or not password:
            raise ConfigError(f"{path}:{number}: expected 'ACCOUNT PASSWORD' with ACCOUNT one of "
                              f"{', '.join(SERVICE_ACCOUNTS)}, {ADMIN_ACCOUNT} or bridge-SCHOOL")
        if any(c.isspace() for c in password) or names.refused_character(password):
            # It goes into a bridge conf's `remote_password` line and into mqtt:// URLs.
            raise ConfigError(f"{path}:{number}: the password of {name} holds a blank or a control character")
        out[name] = password
    return out


def _check_password(account: str, password: str) -> str:
    if (len(password) < 12 or any(c in ":@/" or c.isspace() for c in password)
            or names.refused_character(password)):
        raise ConfigError(f"service account {account}: a password needs at least 12 characters and no "
                          "':', '@', '/', spaces or control characters (it goes into an mqtt:// URL)")
    return password


def render(registry: Registry, *, out_dir: Path, passwords: dict[str, str] | None = None,
           listen: tuple[str, int] = ("127.0.0.1", 1883), persistence_dir: str = "/var/lib/mosquitto",
           district: tuple[str, int] | None = None, district_ca: str = DEFAULT_DISTRICT_CA,
           auth: str = "dynsec", dynsec_plugin: str | None = None) -> BrokerFiles:
    """The files' text. Service passwords: `passwords`, else the ones in `out_dir`, else new ones.

    `district`: this is the district broker, reached by school brokers at (host, TLS port):
    add a bridge account and a bridge conf per school. `auth`: what the conf uses, the
    dynamic-security plugin (`dynsec`, client ids bound) or the password and ACL files (`files`);
    both are written either way, so a site can switch by changing its conf."""
    if auth not in AUTH_MODELS:
        raise ConfigError(f"--auth {auth!r}: expected one of {', '.join(AUTH_MODELS)}")
    out_dir = out_dir.resolve()
    known = read_service_passwords(out_dir / SERVICE_FILE)
    given = dict(passwords or {})
    final: dict[str, str] = {}
    new: list[str] = []
    schools: list[str] = []
    if district is not None:
        with registry.session() as s:
            schools = list(s.scalars(select(School.id).order_by(School.id)))
        for school in schools:
            _checked_id(school, "school", f"school {school!r}")
    _checked_path(str(out_dir), "--out")
    _checked_path(persistence_dir, "--persistence-dir")
    _checked_path(district_ca, "--district-ca")
    _checked_host(listen[0], "--listen")
    if district is not None:
        _checked_host(district[0], "--district")
    accounts = [*SERVICE_ACCOUNTS, *map(bridge_account, schools)]
    for account in [*accounts, ADMIN_ACCOUNT]:
        if account in given:
            final[account] = _check_password(account, given[account])
        elif account in known:
            final[account] = known[account]
        else:
            final[account] = secrets.token_urlsafe(18)
            new.append(account)
    gateways = registry.gateways()
    hashes = _gateway_hashes(registry)
    _check_gateways(gateways, hashes, accounts)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())  # ASCII whatever the locale
    header = f"# Generated by `campus broker-config` from the registry on {stamp}. Do not edit: regenerate.\n"

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
        # Ids only: a room or building name is not a checked token, and a comment is a line too.
        acl += _acl_block(f"gateway {gw['id']} of school {gw['school']}", gw["mqtt_username"],
                          gateway_rules(gw["school"], gw["id"]))

    dynsec = broker_dynsec.render(dynsec_accounts(gateways, hashes, final, schools))
    if auth == "dynsec":
        identity = ("# Accounts, the one client id each gateway and bridge may use, and their rules:\n"
                    "# Mosquitto's dynamic-security plugin (central/broker_dynsec.py says why).\n"
                    + broker_dynsec.conf_lines(out_dir / DYNSEC_FILE, dynsec_plugin))
        apply = ("# Apply changes with a restart (`systemctl restart mosquitto`): the plugin reads its file at\n"
                 "# start only. Persistent sessions and their queues survive a clean restart.\n")
    else:
        identity = f"password_file {out_dir / PASSWD_FILE}\nacl_file {out_dir / ACL_FILE}\n"
        apply = "# Apply changes with a reload (SIGHUP: `systemctl reload mosquitto`); clients stay connected.\n"
    host, port = listen
    conf = (
        header
        + f"# {len(gateways)} gateways, service accounts {', '.join(SERVICE_ACCOUNTS)}"
        + (f", bridges of {len(schools)} schools" if district else "") + ".\n"
        + apply +
        "# When Mosquitto starts as root it drops to the `mosquitto` user: give that user read\n"
        "# access to its files (`campus broker-config --owner mosquitto`).\n"
        "per_listener_settings false\n"
        f"listener {port} {host}\n"
        "allow_anonymous false\n"
        + identity +
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
        f"# {ADMIN_ACCOUNT}: the dynamic-security plugin's $CONTROL topics (mosquitto_ctrl -u {ADMIN_ACCOUNT}).\n"
        "# Later runs keep these passwords; delete a line to get a new one.\n"
        + "".join(f"{account} {final[account]}\n" for account in [*accounts, ADMIN_ACCOUNT])
    )
    bridges = {}
    if district is not None:
        template = read_bridge_template()
        for school in schools:
            bridges[school] = template.format(school=school, district_host=district[0], district_port=district[1],
                                              district_ca=district_ca, bridge_user=bridge_account(school),
                                              bridge_password=final[bridge_account(school)])
    return BrokerFiles(passwd="\n".join(passwd) + "\n", acl="\n".join(acl), conf=conf, service_accounts=service,
                       passwords=final, gateways=[g["id"] for g in gateways], new_service_passwords=bool(new),
                       new_accounts=new,
                       bridges=bridges, dynsec=dynsec, auth=auth)


def dynsec_accounts(gateways: list[dict[str, str]], hashes: dict[str, str], passwords: dict[str, str],
                    schools: list[str]) -> list[broker_dynsec.Account]:
    """Every account of the broker for dynamic-security.json, with the same rules as the ACL file.

    Bound to one client id: each gateway (its agent's `agent-{school}-{gateway}`) and each school's
    bridge. Not bound: the service accounts, whose several processes use ids of their own
    (central/broker_dynsec.py: Mosquitto binds an account to one exact id, never to a prefix)."""
    out = [broker_dynsec.Account(account, mosquitto_password_hash(passwords[account]), None,
                                 f"service account {account}", service_rules(account),
                                 shared_reads=account == "ingest")
           for account in SERVICE_ACCOUNTS]
    out.append(broker_dynsec.Account(ADMIN_ACCOUNT, mosquitto_password_hash(passwords[ADMIN_ACCOUNT]), None,
                                     "administers this file over $CONTROL", [],
                                     extra_acls=broker_dynsec.admin_acls()))
    out += [broker_dynsec.Account(bridge_account(school), mosquitto_password_hash(passwords[bridge_account(school)]),
                                  bridge_client_id(school), f"the bridge from school {school}'s broker",
                                  bridge_rules(school))
            for school in schools]
    out += [broker_dynsec.Account(gw["mqtt_username"], hashes[gw["id"]],
                                  contract.agent_client_id(gw["school"], gw["id"]), f"gateway {gw['id']}",
                                  gateway_rules(gw["school"], gw["id"]))
            for gw in gateways]
    return out


def _acl_block(comment: str, user: str, rules: list[tuple[str, str]]) -> list[str]:
    """One account's lines in the ACL file, then a blank line."""
    return [f"# {comment}", f"user {user}", *(f"topic {access} {topic}" for access, topic in rules), ""]


def _checked_id(value: str, what: str, record: str) -> str:
    try:
        return contract.check_segment(value, what)
    except PayloadError as exc:
        raise ConfigError(f"{record} in the registry: {exc}; correct the record (no broker file was written)") \
            from None


def _checked_path(value: str, option: str) -> str:
    return names.check_one_line(value, option)


def _checked_host(host: str, option: str) -> str:
    if host and not _HOST.fullmatch(host):
        raise ConfigError(f"{option} {host!r}: a host is a name or an address (letters, digits, '.', '-', ':')")
    return host


def _check_gateways(gateways: list[dict[str, object]], hashes: dict[str, str], accounts: list[str]) -> None:
    """Every gateway record, checked before any of it goes into a file (see the module's docstring)."""
    taken = set(accounts)
    for gw in gateways:
        record = f"gateway {gw['id']!r}"
        _checked_id(str(gw["id"]), "gateway id", record)
        _checked_id(str(gw["school"]), "school id", record)
        user = str(gw["mqtt_username"])
        if not _ACCOUNT.fullmatch(user):
            raise ConfigError(f"{record} in the registry: MQTT user name {user!r} cannot go into Mosquitto's files "
                              "(letters, digits, '_', '.', '-'; at most 100); correct the record (no broker file "
                              "was written)")
        if user in taken:
            raise ConfigError(f"{record} in the registry: MQTT user name {user!r} is another account's too; "
                              "correct the record (no broker file was written)")
        taken.add(user)
        if not _MOSQUITTO_HASH.fullmatch(hashes.get(str(gw["id"]), "")):
            # The hash itself is never shown: it is a secret of its own.
            raise ConfigError(f"{record} in the registry: the stored password hash is not one Mosquitto reads "
                              "(PBKDF2-SHA512); give the gateway a new password (no broker file was written)")


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


FILE_MODES = {PASSWD_FILE: 0o600, ACL_FILE: 0o640, DYNSEC_FILE: 0o600, CONF_FILE: 0o644, SERVICE_FILE: 0o600}


def file_mode(name: str) -> int:
    return FILE_MODES.get(name, 0o600)  # bridges/*.conf hold a bridge's password


def write(registry: Registry, out_dir: str | Path, *, owner: str | None = None, **options: object) -> BrokerFiles:
    """Render and write every file into `out_dir` (created if missing).

    `owner`: the user Mosquitto runs as (e.g. `mosquitto`), given the passwd, acl and
    dynamic-security.json files so it can read them after dropping root (needs root to change owners).
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
            owned = name in (PASSWD_FILE, ACL_FILE, DYNSEC_FILE)  # what Mosquitto reads after dropping root
            atomic_write(out / name, text, file_mode(name), ids if owned else None)
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
    return _checked_host(host.strip("[]") or default_host, option), number
