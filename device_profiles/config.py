"""The gateway config file: which school and room, which broker, which devices.

Validated with pydantic at load time; an error names the file, line and
field (`gw.yaml:12: field devices.0.address: port must be 1-65535, got 0`), and the agent does
not start on an invalid config. It lives in the shared layer, not in the agent, because central
checks every device it registers or pushes with these same models (central/registry.py,
central/provisioning.py) and `campus sim` starts simulators from them: a device address is checked
through the protocol table (protocols/), which names the drivers without importing them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

import protocols
from campus import contract, names
from campus.errors import CampusError
from campus.i18n import N_, LazyText, lazy_gettext, message_of
from campus.urls import parse_mqtt_url
from campus.yamlfile import YamlDoc
from device_profiles import Profile, load_profile


def _as_value_error(check: Any, *args: Any) -> Any:
    """Run a project check inside a pydantic validator, so the error keeps its field path."""
    try:
        return check(*args)
    except CampusError as exc:
        raise ValueError(message_of(exc)) from None  # a marked message stays marked (`validation_text`)


# Pydantic's own messages are the library's English ("Input should be a valid integer"). The common ones, by
# their error `type`, in our words (marked: a refused pushed config is shown in the reader's language,
# edge_agent/config_push.py); `limit` is the bound the type names in its `ctx`. Any other type keeps pydantic's
# English inside "field %(field)s: %(error)s".
_VALIDATION_WORDS: dict[str, tuple[str, str | None]] = {
    "missing": (N_("field %(field)s: missing"), None),
    "extra_forbidden": (N_("field %(field)s: not a field here"), None),
    "int_type": (N_("field %(field)s: must be a whole number"), None),
    "int_parsing": (N_("field %(field)s: must be a whole number"), None),
    "int_from_float": (N_("field %(field)s: must be a whole number"), None),
    "float_type": (N_("field %(field)s: must be a number"), None),
    "float_parsing": (N_("field %(field)s: must be a number"), None),
    "string_type": (N_("field %(field)s: must be a text"), None),
    "bool_type": (N_("field %(field)s: must be true or false"), None),
    "bool_parsing": (N_("field %(field)s: must be true or false"), None),
    "dict_type": (N_("field %(field)s: must be an object"), None),
    "model_type": (N_("field %(field)s: must be an object"), None),
    "list_type": (N_("field %(field)s: must be a list"), None),
    "greater_than": (N_("field %(field)s: must be greater than %(limit)s"), "gt"),
    "greater_than_equal": (N_("field %(field)s: must be at least %(limit)s"), "ge"),
    "less_than": (N_("field %(field)s: must be less than %(limit)s"), "lt"),
    "less_than_equal": (N_("field %(field)s: must be at most %(limit)s"), "le"),
    "string_too_short": (N_("field %(field)s: must have at least %(limit)s characters"), "min_length"),
    "string_too_long": (N_("field %(field)s: must have at most %(limit)s characters"), "max_length"),
    "too_short": (N_("field %(field)s: must have at least %(limit)s items"), "min_length"),
    "too_long": (N_("field %(field)s: must have at most %(limit)s items"), "max_length"),
}


def validation_text(err: Any) -> LazyText:
    """One pydantic error (an item of `ValidationError.errors()`) as a marked message naming the field: ours
    for the common types (`_VALIDATION_WORDS`), a validator's own (marked where it raised a LazyText), else
    pydantic's English inside "field %(field)s: %(error)s". str() of it is English."""
    where = ".".join(map(str, err.get("loc") or ()))
    ctx = err.get("ctx") or {}
    kind = err.get("type")
    if kind in _VALIDATION_WORDS:
        msgid, bound = _VALIDATION_WORDS[kind]
        if bound is None:
            return LazyText(msgid, {"field": where})
        if bound in ctx:
            limit = ctx[bound]  # 0, not 0.0, as pydantic's own message says it
            limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
            return LazyText(msgid, {"field": where, "limit": limit})
    if kind == "value_error" and isinstance(ctx.get("error"), BaseException):
        error: str | LazyText = message_of(ctx["error"])
    else:
        error = str(err.get("msg", "")).removeprefix("Value error, ")
    if not where:  # a check of the whole config (a model validator): its message names what is wrong
        return error if isinstance(error, LazyText) else LazyText(error)
    return lazy_gettext("field %(field)s: %(error)s", field=where, error=error)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutboxConfig(_Strict):
    # Bounds: what a gateway keeps while the broker is unreachable. When a
    # bound is hit the oldest messages are dropped (and counted): recent data
    # is worth more to a facility manager than week-old data.
    max_messages: int = Field(200_000, ge=10)
    max_age_s: float = Field(7 * 24 * 3600, gt=0, le=366 * 24 * 3600)  # central refuses ts older than 400 days
    # Drain pace after an outage, messages per second (live rate is a few/s).
    drain_rate: float = Field(500.0, gt=0)
    inflight: int = Field(50, ge=1, le=1000)
    # Rows the broker accepted wait for central's acknowledgement (edge_agent/outbox.py). If central's
    # watermark does not move for this long while some wait, they are sent again (the broker may have
    # lost them: a queue limit, an expired session). Central acknowledges at least every 4 minutes
    # (central/ingest.py ACK_MAX_DELAY_S), so this stays well above that.
    ack_timeout_s: float = Field(600.0, gt=0)


class DeviceConfig(_Strict):
    id: str
    profile: str
    address: dict[str, Any] = Field(default_factory=dict)
    poll_interval: float | None = Field(None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)
    # Settings for `campus sim` (seed, time scale, faults); the agent ignores them.
    simulator: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _as_value_error(contract.check_segment, v, "device id")

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        _as_value_error(load_profile, v)  # the message names the profile's own file and line
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "profile" in info.data:  # else the profile error is reported instead
            _as_value_error(lambda: protocols.check_address(load_profile(info.data["profile"]).protocol, v))
        return v

    @property
    def profile_obj(self) -> Profile:
        return load_profile(self.profile)


PSEUDONYM_RE = contract.PSEUDONYM_RE  # HMAC-SHA256 hex: what the card reader driver makes of a UID


class SceneStep(_Strict):
    """One action of a podium scene, on one device of this gateway (checked against its profile at start)."""
    device: str
    action: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("action")
    @classmethod
    def _action(cls, v: str) -> str:
        if v not in contract.ACTIONS:
            raise ValueError(lazy_gettext("must be one of %(allowed)s, got %(value)s",
                                          allowed=", ".join(contract.ACTIONS), value=repr(v)))
        return v


class PodiumCard(_Strict):
    role: str
    label: str = Field("", max_length=100)

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v not in contract.PODIUM_ROLES:
            raise ValueError(lazy_gettext("must be one of %(allowed)s, got %(value)s",
                                          allowed=", ".join(contract.PODIUM_ROLES), value=repr(v)))
        return v


class PodiumConfig(_Strict):
    """The card-authorised podium (edge_agent/podium.py): which cards may start and end a class here.

    `cards` maps a card's pseudonym (never its UID) to its role; central pushes it (central/podium.py).
    `start`/`end` left out: the default scenes of every projector and display of the gateway (power on,
    `inputs[device]` selected if given, unmuted; power off). `readers` empty: every card reader counts.
    """
    readers: list[str] = Field(default_factory=list)
    inputs: dict[str, str] = Field(default_factory=dict)
    start: list[SceneStep] | None = None
    end: list[SceneStep] | None = None
    # A class nobody ends by a swipe ends by itself this long after it started (0: never).
    timeout_s: float = Field(3 * 3600.0, ge=0, le=24 * 3600.0)
    # Roles whose swipe is only logged (outcome `logged`): a cleaner opens the room, the podium stays off.
    log_only: list[str] = Field(default_factory=lambda: ["cleaner"])
    cards: dict[str, PodiumCard] = Field(default_factory=dict)

    @field_validator("cards")
    @classmethod
    def _cards(cls, v: dict[str, PodiumCard]) -> dict[str, PodiumCard]:
        bad = next((k for k in v if not re.match(PSEUDONYM_RE, k)), None)
        if bad is not None:
            raise ValueError(lazy_gettext("card %(card)s: a card is its pseudonym, 64 lower-case hex digits",
                                          card=repr(bad[:16])))
        return v

    @field_validator("log_only")
    @classmethod
    def _log_only(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if r not in contract.PODIUM_ROLES]
        if bad:
            raise ValueError(lazy_gettext("%(value)s is not a role (%(allowed)s)", value=repr(bad[0]),
                                          allowed=", ".join(contract.PODIUM_ROLES)))
        return v


class PlannedRun(_Strict):
    """One run of a central schedule, compiled by central (central/edge_schedules.py) for this gateway:
    the schedule's id, the planned unix time and the actions on this gateway's devices. Central resolved
    the timetable already, so the gateway needs none: it only keeps time."""
    schedule: int = Field(ge=1)
    at: float = Field(gt=0)
    name: str = Field("", max_length=200)
    steps: list[SceneStep] = Field(min_length=1, max_length=100)


class EdgeSchedules(_Strict):
    """The planned runs this gateway executes on its own clock (edge_agent/schedules.py) until `until`.

    A run found late (the agent was down) still runs within `grace_s` of its time, else it is reported
    as missed: the 22:00 power-off runs at 22:10, not at 07:00 the next morning."""
    until: float = Field(gt=0)
    grace_s: float = Field(30 * 60.0, ge=0, le=24 * 3600.0)
    runs: list[PlannedRun] = Field(default_factory=list, max_length=5000)


class RulesConfig(_Strict):
    """The room's own rules, decided on the gateway (edge_agent/rules.py); central pushes them (`rules`).

    `idle_off_minutes`: switch the room's projectors and displays off once its cameras have counted
    nobody (people_count 0) for this many minutes running and no command ran in the room meanwhile;
    None: never. A camera in fault, or silent, is not "nobody there": it never switches anything off."""
    idle_off_minutes: float | None = Field(None, gt=0, le=24 * 60)


class GatewayConfig(_Strict):
    school: str
    gateway: str
    room: str
    building: str = ""
    mqtt: str = "mqtt://127.0.0.1:1883"
    poll_interval: float = Field(5.0, gt=0)
    data_dir: str = ""
    card_secret: str = ""
    podium: PodiumConfig | None = None
    schedules: EdgeSchedules | None = None
    rules: RulesConfig | None = None
    # How many seconds a minute of the edge rules (`rules`) lasts: 60. Tests and the demo shorten it; it
    # is the file's own setting (a push never changes it).
    rules_minute_s: float = Field(60.0, gt=0, le=60.0)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    devices: list[DeviceConfig] = Field(default_factory=list)
    # The registry's version of this device list, when the file came from it.
    config_version: int | None = Field(None, ge=0)
    # Where the file was read from; relative data_dir is resolved against it.
    source: str = Field("", exclude=True)

    @field_validator("school", "gateway")
    @classmethod
    def _segment(cls, v: str) -> str:
        return _as_value_error(contract.check_segment, v, "id")

    @field_validator("room", "building")
    @classmethod
    def _name(cls, v: str, info: ValidationInfo) -> str:
        # The same rules as the registry's (campus.names): the name goes into every `state` message.
        limit = names.ROOM_MAX if info.field_name == "room" else names.BUILDING_MAX
        try:
            return names.display_name(v, str(info.field_name), max_chars=limit, required=False)
        except names.BadName as exc:
            raise ValueError(exc.reason) from None

    @field_validator("mqtt")
    @classmethod
    def _mqtt(cls, v: str) -> str:
        _as_value_error(parse_mqtt_url, v)
        return v

    @model_validator(mode="after")
    def _unique_devices(self) -> GatewayConfig:
        seen: set[str] = set()
        for dev in self.devices:
            if dev.id in seen:
                raise ValueError(lazy_gettext("device id %(device)s appears twice", device=repr(dev.id)))
            seen.add(dev.id)
        if self.podium is not None:
            steps = [*(self.podium.start or []), *(self.podium.end or [])]
            for where, dev_id in ([("podium.readers", r) for r in self.podium.readers]
                                  + [("podium.inputs", d) for d in self.podium.inputs]
                                  + [("podium scene", s.device) for s in steps]):
                if dev_id not in seen:
                    raise ValueError(lazy_gettext("%(field)s: no device %(device)s on this gateway", field=where,
                                                      device=repr(dev_id)))
        for i, run in enumerate(self.schedules.runs if self.schedules is not None else []):
            for j, step in enumerate(run.steps):
                if step.device not in seen:
                    where = f"schedules.runs.{i}.steps.{j}.device"
                    raise ValueError(lazy_gettext("%(field)s: no device %(device)s on this gateway",
                                                      field=where,
                                                      device=repr(step.device)))
        return self

    def device(self, device_id: str) -> DeviceConfig | None:
        return next((d for d in self.devices if d.id == device_id), None)

    def interval_for(self, dev: DeviceConfig) -> float:
        return dev.poll_interval or self.poll_interval

    @property
    def data_path(self) -> Path:
        base = Path(self.source).parent if self.source else Path.cwd()
        return (base / (self.data_dir or f"{self.gateway}-data")).resolve()


def parse_gateway_config(doc: YamlDoc) -> GatewayConfig:
    if not isinstance(doc.data, dict):
        raise doc.error(f"{doc.source}: a gateway config must be a YAML mapping")
    bad = [k for k in doc.data if not isinstance(k, str) or k == "source"]
    if bad:
        raise doc.fail([str(bad[0])], "not a field of a gateway config")
    try:
        return GatewayConfig(**doc.data, source=doc.source)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        raise doc.fail(list(err["loc"]), msg) from None


def load_gateway_config(path: str | Path) -> GatewayConfig:
    return parse_gateway_config(YamlDoc.read(path))
