"""Mosquitto's acl and passwd files read the way Mosquitto 2.0 reads them, and the rules we expect.

The tests of hostile names (issue 15) compare what the broker would enforce, not what the
generator meant to write: a name holding a line end would show up here as a rule of its own.
"""

from __future__ import annotations

import re

Rule = tuple[str | None, str, str]  # (user, access, topic); user None: before any `user` line (everyone)


def _strtok(text: str) -> tuple[str | None, str]:
    """C's strtok_r(text, " "): the next word after leading spaces, and what follows its delimiter."""
    text = text.lstrip(" ")
    if not text:
        return None, ""
    word, _, rest = text.partition(" ")
    return word, rest


def mosquitto_acl(text: str) -> list[Rule]:
    """The rules of an acl_file as Mosquitto 2.0 reads it (aclfile__parse in security_default.c).

    A line ends at "\n" only (fgets); trailing whitespace is cut; a line whose first character is
    '#' is a comment; else the first word (split at ' ') must be `topic`, `pattern` or `user`: any
    other line stops the broker ("Invalid line in acl_file"), which fails the test here too.
    `topic [ACCESS] TOPIC` without ACCESS is readwrite; a `pattern` rule is for everyone
    (user "%pattern")."""
    rules: list[Rule] = []
    user: str | None = None
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip(" \t\n\v\f\r")
        if line.startswith("#"):
            continue
        word, rest = _strtok(line)
        if word is None:
            continue
        if word in ("topic", "pattern"):
            access, rest = _strtok(rest)
            assert access is not None, f"acl line {number}: empty topic"
            topic = rest.strip(" \t")
            if not topic:
                access, topic = "readwrite", access
            assert access in ("read", "write", "readwrite", "deny"), f"acl line {number}: access {access!r}"
            rules.append(("%pattern" if word == "pattern" else user, access, topic))
        elif word == "user":
            user = rest.strip(" \t")
            assert user, f"acl line {number}: missing user name"
        else:
            raise AssertionError(f"acl line {number}: Mosquitto refuses {line!r}")
    return rules


def mosquitto_passwd(text: str) -> dict[str, str]:
    """user -> hash of a password_file as Mosquitto 2.0 reads it (pwfile__parse): '#' lines and lines
    without ':' are skipped, the user is what comes before the first ':'. A user twice fails."""
    out: dict[str, str] = {}
    for line in text.split("\n"):
        if line.startswith("#") or ":" not in line:
            continue
        user, _, rest = line.partition(":")
        user = user.strip(" \t\r")
        assert user not in out, f"passwd: {user!r} twice"
        out[user] = rest.split(":", 1)[0].strip(" \t\r")
    return out


SERVICE_RULES: set[Rule] = {
    ("ingest", "read", "campus/v1/+/+/state"), ("ingest", "read", "campus/v1/+/+/telemetry/+"),
    ("ingest", "read", "campus/v1/+/+/event/+"), ("ingest", "read", "campus/v1/+/+/cmd/+/result"),
    # Central's presence (each ingest worker's) and its acknowledgements to the gateways.
    ("ingest", "write", "campus/v1/ingest/+"), ("ingest", "write", "campus/v1/+/+/ack"),
    ("web", "write", "campus/v1/+/+/cmd/+"), ("web", "write", "campus/v1/+/+/config"),
    ("web", "read", "campus/v1/+/+/cmd/+/result")}


def gateway_rules(school: str, gateway: str) -> set[Rule]:
    """What a gateway may do, spelled out here (not computed by the code under test)."""
    user, prefix = f"gw-{school}-{gateway}", f"campus/v1/{school}/{gateway}"
    return {(user, "write", f"{prefix}/state"), (user, "write", f"{prefix}/telemetry/+"),
            (user, "write", f"{prefix}/event/+"), (user, "write", f"{prefix}/cmd/+/result"),
            (user, "read", f"{prefix}/cmd/+"), (user, "read", f"{prefix}/config"),
            (user, "read", f"{prefix}/ack"), (user, "read", "campus/v1/ingest/+")}


def expected_rules(gateways: list[tuple[str, str]]) -> set[Rule]:
    """Every rule of an acl for these (school, gateway) pairs and the two service accounts."""
    out = set(SERVICE_RULES)
    for school, gateway in gateways:
        out |= gateway_rules(school, gateway)
    return out


def assert_exact_rules(acl: str, gateways: list[tuple[str, str]]) -> None:
    rules = mosquitto_acl(acl)
    assert len(rules) == len(set(rules)), "a rule twice"
    assert set(rules) == expected_rules(gateways)
    # Only our characters: no name, no byte Mosquitto or a terminal could read another way.
    assert re.fullmatch(r"[ -~\n]*", acl), "non-ASCII or control characters in the acl"
