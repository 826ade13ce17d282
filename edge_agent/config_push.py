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

`ConfigPush` applies a newer list to the running agent (its drivers, pollers
and command workers); the agent hands it the retained payloads it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from campus import contract
from campus.errors import CampusError, ConfigError
from campus.i18n import LazyText, lazy_gettext, message_of
from device_profiles.config import DeviceConfig, GatewayConfig, validation_text

if TYPE_CHECKING:  # the running agent's parts, for ConfigPush only: the functions above stand alone
    from edge_agent.commands import CommandExecutor, Spawn
    from edge_agent.drivers.base import Driver
    from edge_agent.polling import Polling

log = logging.getLogger(__name__)
# Pushes applied to a running agent log as the agent did before it was split: log filters name it.
agent_log = logging.getLogger("edge_agent.agent")

PUSHED_CONFIG_FILE = "pushed-config.json"  # in the data dir, next to the outbox


def validate_pushed_config(base: GatewayConfig, payload: bytes | str) -> tuple[int, GatewayConfig]:
    """(version, config) of a pushed payload; ConfigError naming the field if it is invalid."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(lazy_gettext("payload is not JSON (%(error)s)", error=str(exc))) from None
    if not isinstance(data, dict):
        raise ConfigError(lazy_gettext("payload must be a JSON object with 'version' and 'devices'"))
    version, devices = data.get("version"), data.get("devices")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(lazy_gettext("field version: must be a whole number >= 1, got %(value)s",
                                       value=repr(version)[:40]))
    if not isinstance(devices, list):
        raise ConfigError(lazy_gettext("field devices: must be a list"))
    # The school's card secret and the room's podium (allow-list, scenes) come with the device list
    # when central sends them (central/podium.py); a payload without them keeps the file's. So do the
    # schedules central compiled for this gateway (central/edge_schedules.py, edge_agent/schedules.py), and
    # the room's rules (idle-off: central/edge_rules.py, edge_agent/rules.py).
    extra = {k: data[k] for k in ("podium", "card_secret", "schedules", "rules") if k in data}
    if "card_secret" in extra and not (isinstance(extra["card_secret"], str) and extra["card_secret"].strip()):
        raise ConfigError(lazy_gettext("field card_secret: must be a non-empty text"))
    try:
        config = GatewayConfig.model_validate({**base.model_dump(exclude={"devices"}), "devices": devices,
                                               **extra, "source": base.source})
    except ValidationError as exc:
        # Marked (pydantic's common error types in our words, device_profiles/config.py): the refusal goes
        # back to central in the `config_rejected` event, read by IT staff in their language.
        raise ConfigError(validation_text(exc.errors()[0])) from None
    return version, config


def schedules_taken(config: GatewayConfig) -> dict[str, Any]:
    """What `config_applied` says of the schedules this gateway now runs itself: their ids and the end of
    the plan. Central stops running those schedules for this gateway until then (central/edge_schedules.py):
    the gateway's own word, so a push it refused or never got leaves them with central."""
    plan = config.schedules
    if plan is None:
        return {}
    return {"schedules": sorted({r.schedule for r in plan.runs}), "schedules_until": plan.until}


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
    """(added, changed, removed) device ids; `simulator` settings do not count (the agent ignores them).
    A new card secret changes every card reader and camera (their drivers hash UIDs and QR codes with it)."""
    wanted = {d.id: d for d in new.devices}
    secret_changed = old.card_secret != new.card_secret
    removed = sorted(running - set(wanted))
    added, changed = [], []
    for dev_id, dev in wanted.items():
        before = old.device(dev_id)
        if before is None or dev_id not in running:
            added.append(dev_id)
        elif (before.model_dump(exclude={"simulator"}) != dev.model_dump(exclude={"simulator"})
              or old.interval_for(before) != new.interval_for(dev)
              or (secret_changed and dev.profile_obj.kind in contract.CARD_SECRET_KINDS)):
            changed.append(dev_id)
    return added, changed, removed


class ConfigPush:
    """Applies pushed device lists to a running agent: the newest version only, all or nothing.

    Every new driver is built first (a profile or an address a driver refuses rejects the whole push);
    then removed devices stop (a running command finishes first, their journaled commands are
    answered), changed ones get their new driver (pollers restart; command workers keep their queues),
    added ones start. A refused list is logged and reported once (`config_rejected`), an applied one
    reported as `config_applied`, both through `agent_event`.
    """

    def __init__(self, file_config: GatewayConfig, config: GatewayConfig, version: int | None, *,
                 drivers: dict[str, Driver], locks: dict[str, asyncio.Lock], polling: Polling,
                 commands: CommandExecutor, new_driver: Callable[[DeviceConfig, GatewayConfig], Driver],
                 spawn: Spawn,
                 agent_event: Callable[[str, dict[str, Any]], None], changed: Callable[[], None]) -> None:
        """`spawn` starts a task in the agent's task group; `changed()` republishes the gateway's state."""
        self.file_config = file_config
        self.config = config    # the running config: the file's, or the last pushed list applied
        self.version = version  # None: running the config file's device list
        self.drivers, self.locks = drivers, locks
        self.polling, self.commands = polling, commands
        self.new_driver, self.spawn = new_driver, spawn
        self.agent_event, self.changed = agent_event, changed
        self._lock = asyncio.Lock()  # one push at a time
        self._refused: bytes | None = None  # the last refused payload, reported once

    async def apply(self, payload: bytes) -> bool:
        """Apply a pushed device list if it is newer than the running one; True if applied."""
        async with self._lock:
            version = pushed_version(payload)
            if version is not None and self.version is not None and version <= self.version:
                return False  # the retained message again (reconnect), or an older one
            if payload == self._refused:
                return False  # the same refused list again (reconnect): reported once already
            try:
                version, new = validate_pushed_config(self.file_config, payload)
                await self._swap_devices(version, new, payload)
            except CampusError as exc:
                self._refuse(payload, version, message_of(exc))
                return False
            except Exception as exc:  # never let a bad push take the agent down
                agent_log.exception("applying pushed config v%s failed", version)
                error = f"{type(exc).__name__}: {exc}"
                self._refuse(payload, version, lazy_gettext("internal error: %(error)s", error=error))
                return False
            return True

    def _refuse(self, payload: bytes, version: int | None, error: str | LazyText) -> None:
        self._refused = payload
        running = f"v{self.version}" if self.version is not None else "the config file's list"
        agent_log.error("pushed config %s refused, still running %s: %s",
                        f"v{version}" if version is not None else "(no version)", running, error)
        # The error in English (every central before) and marked (campus/contract.py EVENT_TEXTS).
        self.agent_event(contract.CONFIG_REJECTED_EVENT, {
            "version": version, **contract.text_fields(error, contract.CONFIG_ERROR_CHARS, "error"),
            "running": self.version})

    async def _swap_devices(self, version: int, new: GatewayConfig, payload: bytes) -> None:
        added, changed, removed = device_changes(self.config, new, set(self.drivers))
        wanted = {d.id: d for d in new.devices}
        # Every new driver first: a profile or address a driver refuses rejects the whole push.
        fresh: dict[str, Driver] = {}
        try:
            for dev_id in added + changed:
                try:
                    fresh[dev_id] = self.new_driver(wanted[dev_id], new)
                except (CampusError, ValueError) as exc:
                    raise ConfigError(lazy_gettext("device %(device)s: %(error)s", device=dev_id,
                                                   error=message_of(exc))) from None
            try:
                save_pushed(self.config, payload)
            except OSError as exc:
                # A full disk must not stop a push: the broker keeps the list (retained) and delivers it
                # again at the next connect; until then a restart runs the list saved before.
                agent_log.warning("pushed config v%d applied but not saved (%s): a restart runs the previous "
                                  "list until the broker delivers this one again", version, exc.strerror or exc)
        except BaseException:
            for driver in fresh.values():
                with contextlib.suppress(Exception):
                    await driver.close()
            raise
        for dev_id in removed:
            await self._remove_device(dev_id, lazy_gettext("device removed from the gateway config (v%(version)s)",
                                                           version=version))
        for dev_id in changed:
            await self._replace_driver(dev_id, fresh[dev_id])
        self.config, self.version = new, version
        self.polling.config = new
        for dev_id in added:
            self.locks[dev_id] = asyncio.Lock()
            self.polling.starting(dev_id)
            self.drivers[dev_id] = fresh[dev_id]
            self.commands.start(dev_id, self.spawn)
        for dev_id in changed + added:
            self.polling.start(dev_id, self.spawn)
        self._refused = None
        agent_log.info("applied pushed config v%d: %d devices (added %s, changed %s, removed %s)", version,
                       len(self.drivers), added or "-", changed or "-", removed or "-")
        self.agent_event(contract.CONFIG_APPLIED_EVENT, {"version": version, "added": added, "changed": changed,
                                            "removed": removed, **schedules_taken(new)})
        self.changed()

    async def _replace_driver(self, device_id: str, driver: Driver) -> None:
        """Same device id, new settings: the command worker and its queue stay."""
        await self.polling.stop(device_id)
        async with self.locks[device_id]:  # a command running on the old driver finishes first
            old, self.drivers[device_id] = self.drivers[device_id], driver
            self.polling.starting(device_id)
        with contextlib.suppress(Exception):
            await old.close()

    async def _remove_device(self, device_id: str, reason: str | LazyText) -> None:
        await self.polling.stop(device_id)
        async with self.locks[device_id]:  # a command running on it finishes first
            await self.commands.stop(device_id)
            driver = self.drivers.pop(device_id)
            self.polling.forget(device_id)
        self.locks.pop(device_id, None)
        self.commands.remove(device_id, reason)
        with contextlib.suppress(Exception):
            await driver.close()
