"""Pushed device lists: validation, the file that keeps the applied one, what changed.

Central publishes `{"version": N, "devices": [...]}` retained on the gateway's
`config` topic (campus.contract.config_topic). The agent (agent.py) applies a
version newer than the one it runs; this module holds the parts that need no
running agent, so they are tested on their own:

- `validate_pushed_config`: the payload as a full GatewayConfig (the file's
  settings, the pushed devices), validated exactly like the config file; a
  ConfigError names the field (`field devices.1.address: port must be ...`).
- `load_pushed` / `save_pushed`: `pushed-config.json` next to the outbox, so a
  restarted agent runs the last applied list instead of the file's devices.
- `device_changes`: which device ids were added, changed or removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from pydantic import ValidationError

from campus.errors import CampusError, ConfigError
from edge_agent.config import GatewayConfig

log = logging.getLogger(__name__)

PUSHED_CONFIG_FILE = "pushed-config.json"  # in the data dir, next to the outbox


def validate_pushed_config(base: GatewayConfig, payload: bytes | str) -> tuple[int, GatewayConfig]:
    """(version, config) of a pushed payload; ConfigError naming the field if it is invalid."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"payload is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError("payload must be a JSON object with 'version' and 'devices'")
    version, devices = data.get("version"), data.get("devices")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"field version: must be a whole number >= 1, got {version!r}")
    if not isinstance(devices, list):
        raise ConfigError("field devices: must be a list")
    try:
        config = GatewayConfig.model_validate({**base.model_dump(exclude={"devices"}), "devices": devices,
                                               "source": base.source})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise ConfigError(f"field {where}: {err['msg'].removeprefix('Value error, ')}") from None
    return version, config


def pushed_version(payload: bytes | str) -> int | None:
    """The `version` of a pushed payload, if it can be read at all."""
    with contextlib.suppress(Exception):
        version = json.loads(payload).get("version")
        if isinstance(version, int) and not isinstance(version, bool):
            return version
    return None


def pushed_path(config: GatewayConfig) -> Path:
    return config.data_path / PUSHED_CONFIG_FILE


def load_pushed(config: GatewayConfig) -> tuple[int, GatewayConfig] | None:
    """The last applied pushed list, if there is a valid one (else None, and the file's devices run)."""
    path = pushed_path(config)
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.error("cannot read the pushed config %s (%s); using the devices of the config file", path, exc)
        return None
    try:
        version, pushed = validate_pushed_config(config, payload)
    except CampusError as exc:
        log.error("%s: %s; using the devices of the config file", path, exc)
        return None
    log.info("using the device list v%d pushed by central (%s) instead of the %d devices of the config file",
             version, path, len(config.devices))
    return version, pushed


def save_pushed(config: GatewayConfig, payload: bytes) -> None:
    """Keep an applied list (atomically: a crash leaves the old file or the new one)."""
    path = pushed_path(config)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def device_changes(old: GatewayConfig, new: GatewayConfig, running: set[str]) -> tuple[list[str], list[str], list[str]]:
    """(added, changed, removed) device ids; `simulator` settings do not count (the agent ignores them)."""
    wanted = {d.id: d for d in new.devices}
    removed = sorted(running - set(wanted))
    added, changed = [], []
    for dev_id, dev in wanted.items():
        before = old.device(dev_id)
        if before is None or dev_id not in running:
            added.append(dev_id)
        elif (before.model_dump(exclude={"simulator"}) != dev.model_dump(exclude={"simulator"})
              or old.interval_for(before) != new.interval_for(dev)):
            changed.append(dev_id)
    return added, changed, removed
