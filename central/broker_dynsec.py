"""Broker accounts for Mosquitto's dynamic-security plugin: each account bound to the client id it may use.

Why this exists (issue 15, client-id takeover): with `password_file` + `acl_file`, any account may
connect with any client id, and Mosquitto answers a CONNECT whose id is in use by closing the older
connection and handing its persistent session (subscriptions, queued messages) to the newcomer. So one
gateway's password, taken from a classroom, was enough to kick central ingest off the broker and take its
queue, or to take another gateway's queued commands.

How Mosquitto 2.0.11 can stop that, as tried against the real broker (tests/test_broker_config.py):

- dynamic-security `clientid` on a client: an exact match, checked with the password, before the broker
  looks for a session with that id. A mismatch gets CONNACK "not authorised" (135; 5 in MQTT 3.1.1) and
  whoever holds the id is not disturbed. Chosen for every gateway (`agent-{school}-{gateway}`) and every
  school bridge (`bridge-{school}`, the template's `remote_clientid`).
- `use_username_as_clientid true`: binds too, but per listener and for every account: the ingest
  workers of one account (`--share`, `campus-{name}` each) all got the id `ingest` and closed one
  another's connections, and existing sessions (`agent-...`) would be orphaned.
- ACL rules, `pattern` with %c/%u included, restrict topics, not the CONNECT: with the ACL file in
  place a gateway's account still took ingest's id and, with a clean start, erased its queue.
- Mosquitto has no "client ids with this prefix" per account. The service accounts (`ingest`, several
  workers under one account; `web`, one random `campus-web-…` id per process; `broker-admin`) are
  therefore not bound: their secrets live on the central host only (service-accounts.txt, mode 0600),
  and no gateway or bridge account can use any id but its own.

The plugin reads its file when Mosquitto starts (a SIGHUP does not re-read it in 2.0.11), so a new
gateway needs a restart; persistent sessions and their queues survive a clean restart. Live changes
over `$CONTROL/dynamic-security/v1` (with the `broker-admin` account) act at once, e.g. `disableClient`
to lock a stolen gateway out; the registry stays the source, and the next `campus broker-config` rewrites
the file from it.

Passwords: the registry keeps Mosquitto `$7$` hashes (PBKDF2-SHA512), which are what the plugin stores
too (salt, hash and iterations as separate fields), so no plain gateway password is ever needed here.
The file is JSON written by `json.dumps` (ASCII only): no registry name can end a line or add a rule.
"""

from __future__ import annotations

import json
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from campus.errors import ConfigError

DYNSEC_FILE = "dynamic-security.json"
PLUGIN_NAME = "mosquitto_dynamic_security.so"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
# Nothing is allowed unless a role says so (unsubscribing is harmless and always allowed).
DEFAULT_ACCESS = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                  "unsubscribe": True}


def plugin_path() -> str:
    """Where Mosquitto's dynamic-security plugin is: Debian's multiarch path on this machine's architecture
    (`dpkg -L mosquitto | grep dynamic`), else the first install location that exists."""
    candidates = [f"/usr/lib/{arch}/{PLUGIN_NAME}" for arch in filter(None, [sysconfig.get_config_var("MULTIARCH")])]
    candidates += [f"/usr/lib/{PLUGIN_NAME}", f"/usr/local/lib/{PLUGIN_NAME}"]
    return next((path for path in candidates if Path(path).exists()), candidates[0])


@dataclass
class Account:
    """One MQTT account: its `$7$` password hash, the client id it is bound to (None: any) and its rules."""
    username: str
    password_hash: str
    clientid: str | None
    text: str
    rules: list[tuple[str, str]]  # (read | write | readwrite, topic filter), as the ACL file has them
    shared_reads: bool = False  # it reads through MQTT 5 `$share/GROUP/...` subscriptions too
    extra_acls: list[dict[str, object]] = field(default_factory=list)


def acls(rules: list[tuple[str, str]], shared_reads: bool = False) -> list[dict[str, object]]:
    """The plugin's ACL entries for (access, filter) rules.

    `write` is publishClientSend. `read` needs two: subscribePattern (the plugin checks the filter a client
    subscribes to, `$share/GROUP/` included, so ingest's shared subscriptions need their own pattern) and
    publishClientReceive (checked on delivery with the real topic, retained messages too)."""
    out: list[dict[str, object]] = []
    for access, topic in rules:
        if access not in ("read", "write", "readwrite"):
            raise ConfigError(f"ACL access {access!r}: expected read, write or readwrite")
        if access in ("write", "readwrite"):
            out.append({"acltype": "publishClientSend", "topic": topic, "allow": True})
        if access in ("read", "readwrite"):
            out.append({"acltype": "subscribePattern", "topic": topic, "allow": True})
            if shared_reads:
                out.append({"acltype": "subscribePattern", "topic": f"$share/+/{topic}", "allow": True})
            out.append({"acltype": "publishClientReceive", "topic": topic, "allow": True})
    return out


def admin_acls() -> list[dict[str, object]]:
    """The `broker-admin` account: the plugin's control topics, nothing else."""
    topic = "$CONTROL/dynamic-security/#"
    return [{"acltype": kind, "topic": topic, "allow": True}
            for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")]


def _hash_fields(username: str, digest: str) -> dict[str, object]:
    """A `$7$ITERATIONS$SALT$HASH` password_file hash as the plugin's password, salt and iterations."""
    parts = digest.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        raise ConfigError(f"account {username}: stored password hash is not in Mosquitto's $7$ format")
    return {"password": parts[4], "salt": parts[3], "iterations": int(parts[2])}


def render(accounts: list[Account]) -> str:
    """The plugin's config file: one client and one role (named after the account) per account."""
    clients: list[dict[str, object]] = []
    roles: list[dict[str, object]] = []
    seen: dict[str, str] = {}
    for account in accounts:
        if account.username in seen:
            raise ConfigError(f"two accounts named {account.username!r} ({seen[account.username]}; {account.text})")
        seen[account.username] = account.text
        client: dict[str, object] = {"username": account.username, "textname": account.text,
                                     **_hash_fields(account.username, account.password_hash),
                                     "roles": [{"rolename": account.username}]}
        if account.clientid is not None:
            client["clientid"] = account.clientid
        clients.append(client)
        roles.append({"rolename": account.username,
                      "acls": acls(account.rules, account.shared_reads) + list(account.extra_acls)})
    return json.dumps({"clients": clients, "groups": [], "roles": roles, "defaultACLAccess": DEFAULT_ACCESS},
                      indent=1, ensure_ascii=True) + "\n"


def conf_lines(config_file: Path, plugin: str | None = None) -> str:
    """The mosquitto.conf lines that load the plugin with `config_file`."""
    return f"plugin {plugin or plugin_path()}\nplugin_opt_config_file {config_file}\n"
