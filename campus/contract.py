"""The MQTT contract: every topic and payload of CONTRACT.md, in one place.

The edge agent and the central services both import this module; nothing
else in the project spells a topic string or builds a payload by hand.
Decoders validate everything that comes from the network and raise
`PayloadError` naming the topic part or field that was wrong.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from campus import names
from campus.errors import ConfigError, PayloadError
from campus.i18n import N_, LazyText, ReportedText, lazy_gettext, message_of

ROOT = "campus/v1"
MAX_PAYLOAD_BYTES = 64 * 1024
# Topic segments are identifiers we generate or an admin types: keep them
# to characters that cannot be MQTT wildcards or separators.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

KIND_STATE = "state"
KIND_TELEMETRY = "telemetry"
KIND_EVENT = "event"
KIND_CMD = "cmd"
KIND_CMD_RESULT = "cmd_result"
KIND_CONFIG = "config"
KIND_ACK = "ack"

COMMAND_STATUSES = ("pending", "done", "failed", "rejected", "expired")
FINAL_COMMAND_STATUSES = ("done", "failed", "rejected", "expired")
DEVICE_STATUSES = ("ok", "fault", "offline", "starting")
# A gateway's own storage (state.storage.status): `full` no space, `error` writes refused (I/O error, read-only).
STORAGE_STATUSES = ("ok", "full", "error")
ACTIONS = ("power_on", "power_off", "select_input", "set_volume", "mute", "unmute")
# How a person reads each action (marked for translation): the pages' term (dashboards/i18n.py TERMS), and the
# gateway's words when a device refuses one ("set 1 refused power on").
ACTION_WORDS = {"power_on": N_("power on"), "power_off": N_("power off"), "select_input": N_("select input"),
                "set_volume": N_("set volume"), "mute": N_("mute"), "unmute": N_("unmute")}
# The parameters each action takes (CONTRACT.md), by name: an input name of the device's profile, or a
# whole-number percentage. device_profiles.check_action checks a command against these and the profile.
ACTION_PARAMS: dict[str, dict[str, str]] = {
    "power_on": {}, "power_off": {}, "mute": {}, "unmute": {},
    "select_input": {"input": "input name"},
    "set_volume": {"level": "percent"},
}
# The card-authorised podium (edge_agent/podium.py): what a swipe did, reported as an event of type
# PODIUM_EVENT on the event topic of device PODIUM_DEVICE; data: card (pseudonym, or "" for a timeout),
# role, outcome, reader, steps [{device, action, status, detail[, detail_msgid, detail_params]}] (the step's
# text as `text_fields` writes it). Card roles: who a card belongs to.
PODIUM_EVENT = "podium"
PODIUM_DEVICE = "podium"
PODIUM_ROLES = ("teacher", "facility", "cleaner")
PODIUM_OUTCOMES = ("started", "ended", "refused", "logged")
# Schedules run at the edge (edge_agent/schedules.py): each planned run, reported once as an event of type
# SCHEDULE_RUN_EVENT on the event topic of device SCHEDULE_DEVICE; data: schedule (id), planned (unix time),
# name, outcome (one of SCHEDULE_OUTCOMES), steps [{device, action, status, detail[, detail_msgid,
# detail_params]}] (`text_fields`). Central records it
# in the schedule's history (central/edge_schedules.py), once per (schedule, planned, gateway).
SCHEDULE_RUN_EVENT = "schedule_run"
SCHEDULE_DEVICE = "schedules"
SCHEDULE_SKIPPED = "skipped"  # not run: a teacher's override holds (data also has `reason`)
SCHEDULE_OUTCOMES = ("ran", "missed", "interrupted", SCHEDULE_SKIPPED)
# The room's own rules at the edge (edge_agent/rules.py), decided on the gateway (offline too): each rule
# run reported once as an event of type RULE_RUN_EVENT on the event topic of device RULES_DEVICE; data:
# rule (one of RULES), at (the planned unix time: when the rule's condition was met), steps
# [{device, action, status, detail}], reason (why, in words). A teacher's period override is a
# gateway-level command to device RULES_DEVICE: action OVERRIDE_ACTION, params {"until": unix time}
# (central computes it from the school timetable's current period end; an `until` in the past clears
# it); while it holds, idle-off and power-off schedule runs skip the room (SCHEDULE_SKIPPED, reason
# OVERRIDE_REASON). Acknowledged like any command (cmd_result on RULES_DEVICE).
RULE_RUN_EVENT = "rule_run"
RULES_DEVICE = "rules"
RULE_IDLE_OFF = "idle_off"
RULES = (RULE_IDLE_OFF,)
OVERRIDE_ACTION = "override"
OVERRIDE_REASON = "override"
GATEWAY_ACTIONS = (OVERRIDE_ACTION,)
# Events about the agent itself (on the event topic of device AGENT_DEVICE): a pushed config applied or refused
# (data of CONFIG_REJECTED_EVENT: version, error, running), a damaged outbox replaced (data: State.outbox_replaced's).
AGENT_DEVICE = "agent"
CONFIG_APPLIED_EVENT = "config_applied"
CONFIG_REJECTED_EVENT = "config_rejected"
OUTBOX_REPLACED_EVENT = "outbox_replaced"
# Words for people inside an event's data, written on the gateway: the field of each event type that holds them.
# Each goes as `text_fields` writes it under that name (`error`, `error_msgid`, `error_params`), so central shows
# it in the reader's language (`marked_text`); `Event.decode` holds the marked fields to `reported_text`'s bounds.
EVENT_TEXTS = {CONFIG_REJECTED_EVENT: "error", OUTBOX_REPLACED_EVENT: "reason", RULE_RUN_EVENT: "reason"}
CONFIG_ERROR_CHARS = 1000   # a refused config's `error` (English) is cut to this
REPLACED_REASON_CHARS = 300  # an outbox replacement's `reason`
CARD_SWIPE_EVENT = "card_swipe"  # a card reader's event; data: card (pseudonym), reader
# A QR check-in at a classroom camera (edge_agent/drivers/camera.py): an event of type ATTENDANCE_EVENT;
# data (`attendance_data`): person (the pseudonym of the code shown: protocols.card_ids.qr_pseudonym keyed with
# the school's card secret), camera (the device id). The printed code identifies a minor: it never leaves the
# gateway, and `Event.decode` refuses an attendance event with any other field (an older agent's raw `code`).
ATTENDANCE_EVENT = "attendance"
ATTENDANCE_FIELDS = ("person", "camera")
# What HMAC-SHA256 in hex looks like: every pseudonym of a card or a QR code (protocols/card_ids.py).
PSEUDONYM_RE = r"^[0-9a-f]{64}$"
_PSEUDONYM = re.compile(PSEUDONYM_RE)
# Device kinds whose drivers pseudonymise with the school's card secret (the agent hands it to them, and a
# pushed new secret rebuilds them): card readers (UIDs) and cameras (QR check-in codes).
CARD_SECRET_KINDS = ("card_reader", "camera")
DEVICE_KINDS = ("environment", "card_reader", "projector", "display", "camera", "meter")
# String metrics with a closed set of values (stores without strings keep the index).
METRIC_ENUMS: dict[str, tuple[str, ...]] = {
    "power": ("off", "on", "warming", "cooling"),
    "muted": ("off", "on"),
    "error_*": ("ok", "warning", "error"),
}


# Metrics of CONTRACT.md that are numbers: a string ("NaN", "Infinity", "21.5") is refused at decode.
NUMERIC_METRICS = frozenset({
    "temperature_c", "humidity_pct", "co2_ppm", "pm25_ugm3", "illuminance_lux", "noise_dba", "people_count",
    "lamp_hours", "filter_hours", "volume", "energy_kwh", "power_w", "voltage_v", "current_a",
})
# Metrics that are counters: they only grow, except when the device's register is reset or the device
# is replaced. Over an interval a counter's increase is `campus.counters.increase`, never a difference
# of two readings (which a reset makes negative); the agent reports each drop as a COUNTER_RESET event.
COUNTER_METRICS = frozenset({"energy_kwh"})
COUNTER_RESET = "counter_reset"  # event type; data: metric, before, after

# Clocks are data, not authority. A gateway's `ts` is what its clock said; central compares it with
# the time it received the message:
# - outside [received - TS_MAX_AGE_S, received + TS_MAX_AHEAD_S] (or before TS_FLOOR) the message is
#   refused at decode (counted as rejected): a gateway whose RTC lost power says 1970, a corrupt
#   field says 1e15. An outbox keeps messages at most `max_age_s` (bounded to a year by the config).
# - more than CLOCK_AHEAD_S ahead: stored, counted per gateway as `clock_ahead`, and never taken as
#   the newest value (central/ledger.py orders values by seq, not by ts).
TS_FLOOR = 1_577_836_800.0  # 2020-01-01T00:00:00Z: older than any campus-iot gateway
TS_MAX_AGE_S = 400 * 86400.0
TS_MAX_AHEAD_S = 7 * 86400.0
CLOCK_AHEAD_S = 300.0


def clock_ahead(ts: float, received: float, what: str) -> bool:
    """Whether `ts` is flagged as ahead of `received`; PayloadError if it is not a plausible time at all."""
    if ts < TS_FLOOR or ts < received - TS_MAX_AGE_S:
        raise PayloadError(f"{what}: field 'ts' {ts:.0f} is more than {TS_MAX_AGE_S / 86400:.0f} days before it was "
                           "received (or before 2020): the gateway's clock is wrong")
    if ts > received + TS_MAX_AHEAD_S:
        raise PayloadError(f"{what}: field 'ts' {ts:.0f} is more than {TS_MAX_AHEAD_S / 86400:.0f} days after it was "
                           "received: the gateway's clock is wrong")
    return ts > received + CLOCK_AHEAD_S


def metric_enum(metric: str) -> tuple[str, ...] | None:
    """The closed set of values of an enumerated metric, or None."""
    if metric in METRIC_ENUMS:
        return METRIC_ENUMS[metric]
    if metric.startswith("error_"):
        return METRIC_ENUMS["error_*"]
    return None


def check_segment(value: str, what: str) -> str:
    """Return `value` if it is a valid topic segment, else raise PayloadError."""
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise PayloadError(lazy_gettext("%(field)s %(value)s is not a valid id (letters, digits, '_', '.', '-'; "
                                        "at most 64)", field=what, value=repr(value)))
    return value


# ---------------------------------------------------------------- topics


def gateway_prefix(school: str, gateway: str) -> str:
    return f"{ROOT}/{check_segment(school, 'school')}/{check_segment(gateway, 'gateway')}"


def state_topic(school: str, gateway: str) -> str:
    return f"{gateway_prefix(school, gateway)}/state"


def telemetry_topic(school: str, gateway: str, device: str) -> str:
    return f"{gateway_prefix(school, gateway)}/telemetry/{check_segment(device, 'device')}"


def event_topic(school: str, gateway: str, device: str) -> str:
    return f"{gateway_prefix(school, gateway)}/event/{check_segment(device, 'device')}"


def cmd_topic(school: str, gateway: str, device: str) -> str:
    return f"{gateway_prefix(school, gateway)}/cmd/{check_segment(device, 'device')}"


_RESULT = "/result"


def cmd_result_topic(school: str, gateway: str, device: str) -> str:
    return f"{cmd_topic(school, gateway, device)}{_RESULT}"


def cmd_results_filter(school: str = "+") -> str:
    """Every command result (of one school or all): what ingest and the web app subscribe to."""
    return f"{ROOT}/{school}/+/cmd/+{_RESULT}"


def is_cmd_result(topic: str) -> bool:
    """A quick look (no validation) for code that must not wait on a command's result."""
    return topic.endswith(_RESULT)


def config_topic(school: str, gateway: str) -> str:
    return f"{gateway_prefix(school, gateway)}/config"


def ack_topic(school: str, gateway: str) -> str:
    """Central's acknowledgement to one gateway (retained): every seq up to `Ack.seq` is stored."""
    return f"{gateway_prefix(school, gateway)}/{KIND_ACK}"


def acks_filter(school: str = "+") -> str:
    """Every gateway's acknowledgement (of one school or all): for monitoring and benchmarks."""
    return f"{ROOT}/{school}/+/{KIND_ACK}"


# Central's presence, one retained state per ingest worker (Sparkplug's primary-host STATE): four
# levels, so no gateway topic (five or more: campus/v1/{school}/{gateway}/...) and no filter of
# ingest_filters() can ever match one, whatever a worker or a school is called.
_INGEST_STATE = f"{ROOT}/ingest"


def ingest_state_topic(worker: str) -> str:
    """Where ingest worker `worker` says it is online (and its Last Will says it is not)."""
    return f"{_INGEST_STATE}/{check_segment(worker, 'ingest worker name')}"


def ingest_states_filter() -> str:
    """Every ingest worker's presence: what agents subscribe to (central is online while any worker is)."""
    return f"{_INGEST_STATE}/+"


def parse_ingest_state_topic(topic: str) -> str | None:
    """The worker name of an ingest presence topic, or None if `topic` is not one."""
    head, _, worker = topic.rpartition("/")
    if head != _INGEST_STATE or not _SEGMENT.fullmatch(worker):
        return None
    return worker


def agent_cmd_filter(school: str, gateway: str) -> str:
    """What one agent subscribes to: commands for its own devices only."""
    return f"{gateway_prefix(school, gateway)}/cmd/+"


def ingest_filters(school: str = "+") -> list[str]:
    """What central ingest subscribes to (one school or all of them)."""
    base = f"{ROOT}/{school}/+"
    return [f"{base}/state", f"{base}/telemetry/+", f"{base}/event/+", cmd_results_filter(school)]


def share(filter_: str, group: str) -> str:
    """An MQTT 5 shared-subscription filter, so N ingest workers split the load."""
    return f"$share/{check_segment(group, 'share group')}/{filter_}"


def agent_client_id(school: str, gateway: str) -> str:
    """The MQTT client id of a gateway's agent. Fixed, so the broker keeps the agent's persistent session
    (commands queued while it is away); the broker binds the gateway's account to exactly this id
    (central/broker_dynsec.py), so no other account can connect as the agent."""
    return f"agent-{school}-{gateway}"


@dataclass(frozen=True)
class Topic:
    kind: str
    school: str
    gateway: str
    device: str | None = None


@functools.lru_cache(maxsize=65536)  # a district's topics repeat with every message; a Topic is immutable
def parse_topic(topic: str) -> Topic:
    """Split a contract topic into its parts; PayloadError if it is not one."""
    parts = topic.split("/")
    if len(parts) < 5 or f"{parts[0]}/{parts[1]}" != ROOT:
        raise PayloadError(f"topic {topic!r} is not under {ROOT}/{{school}}/{{gateway}}/")
    school, gateway, rest = parts[2], parts[3], parts[4:]
    check_segment(school, "school")
    check_segment(gateway, "gateway")
    if rest == ["state"]:
        return Topic(KIND_STATE, school, gateway)
    if rest == ["config"]:
        return Topic(KIND_CONFIG, school, gateway)
    if rest == [KIND_ACK]:
        return Topic(KIND_ACK, school, gateway)
    if len(rest) == 2 and rest[0] in (KIND_TELEMETRY, KIND_EVENT, KIND_CMD):
        return Topic(rest[0], school, gateway, check_segment(rest[1], "device"))
    if len(rest) == 3 and rest[0] == KIND_CMD and rest[2] == "result":
        return Topic(KIND_CMD_RESULT, school, gateway, check_segment(rest[1], "device"))
    raise PayloadError(f"topic {topic!r}: unknown message kind {'/'.join(rest)!r}")


# ---------------------------------------------------------------- payloads


MAX_DEPTH = 16
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1  # what every store (SQLite INTEGER) can hold


def _reject_constant(name: str) -> None:
    raise ValueError(lazy_gettext("%(name)s is not a number JSON allows", name=name))


# Built once: json.loads(..., parse_constant=...) would build a decoder per message.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _bad_string(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(lazy_gettext("%(what)s: a string is not valid Unicode (lone surrogate)",
                                        what=LazyText(what))) from None


def _check_tree(data: Any, what: str, depth: int = 0) -> None:
    """Every value is something every store can keep: bounded depth, 64-bit ints,
    finite floats, strings that are valid UTF-8 (no lone surrogates).

    Scalars are checked inline and only containers recurse: this runs on every
    message ingest receives. (Recursion is bounded: the depth check comes first.)
    """
    if depth > MAX_DEPTH:
        raise PayloadError(lazy_gettext("%(what)s: nested deeper than %(max)s levels", what=LazyText(what),
                                        max=MAX_DEPTH))
    if type(data) is dict:
        for key in data:
            if not key.isascii():
                _bad_string(key, what)
        values = data.values()
    else:
        values = data
    for value in values:
        t = type(value)
        if t is float:
            if not math.isfinite(value):
                raise PayloadError(lazy_gettext("%(what)s: numbers must be finite", what=LazyText(what)))
        elif t is str:
            if not value.isascii():
                _bad_string(value, what)
        elif t is int:
            if not _INT_MIN <= value <= _INT_MAX:
                raise PayloadError(lazy_gettext("%(what)s: integer %(value)s… does not fit in 64 bits",
                                                what=LazyText(what), value=str(value)[:20]))
        elif t is dict or t is list:
            _check_tree(value, what, depth + 1)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(lazy_gettext("the key %(key)s appears twice in one object", key=repr(key[:40])))
        obj[key] = value
    return obj


# For what people and scripts send over HTTP: also refuses duplicate keys (which parsers resolve
# differently, so two programs could read two different commands out of one body). Not used on the
# MQTT payloads: the pairs hook costs ingest time on every object, and agents never write duplicates.
_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)


def loads_strict(text: bytes | str, what: str) -> Any:
    """JSON as RFC 8259 defines it, for request bodies: PayloadError naming the problem (and `what`, an
    English phrase looked up in the catalog when shown: `N_("the body")`) for NaN,
    Infinity, a duplicate key, and what the MQTT payloads are refused for (integers beyond 64 bits,
    nesting deeper than MAX_DEPTH, lone surrogates), so nothing a store or a browser cannot read
    gets past the door."""
    try:
        data = _STRICT_DECODER.decode(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, NaN, duplicate keys, >4300-digit ints
        reason = message_of(exc)  # ours (a duplicate key, NaN) translatable; the json module's English
        raise PayloadError(lazy_gettext("%(what)s is not valid JSON: %(error)s", what=LazyText(what),
                                        error=reason if isinstance(reason, LazyText) else reason[:200])) from None
    except RecursionError:
        raise PayloadError(lazy_gettext("%(what)s is nested too deeply", what=LazyText(what))) from None
    if type(data) is dict or type(data) is list:
        _check_tree(data, what)
    elif type(data) is float and not math.isfinite(data):  # 1e999 parses to inf without parse_constant
        raise PayloadError(lazy_gettext("%(what)s: numbers must be finite", what=LazyText(what)))
    return data


def _load(payload: bytes | str, what: str) -> dict[str, Any]:
    if isinstance(payload, str):
        try:
            payload = payload.encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadError(f"{what}: payload is not valid Unicode") from None
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"{what}: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        data = _DECODER.decode(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, NaN, >4300-digit ints
        raise PayloadError(f"{what}: payload is not JSON ({str(exc)[:200]})") from None
    except RecursionError:
        raise PayloadError(f"{what}: payload is nested too deeply") from None
    if type(data) is not dict:
        raise PayloadError(f"{what}: payload must be a JSON object, got {type(data).__name__}")
    _check_tree(data, what)
    return data


def _dump(obj: Any) -> bytes:
    try:
        return json.dumps(asdict(obj), separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # NaN or an infinity: not JSON, and no decoder of ours would take it back
        raise PayloadError(f"{type(obj).__name__.lower()}: numbers must be finite") from None


def _field(data: dict[str, Any], name: str, types: type | tuple[type, ...], what: str, *, optional: bool = False,
           default: Any = None, nul: bool = False) -> Any:
    if name not in data:
        if optional:
            return default
        raise PayloadError(f"{what}: field '{name}' is missing")
    value = data[name]
    # bool is an int in Python; a JSON true is never a number here.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise PayloadError(f"{what}: field '{name}' must be {_type_names(types)}, got a boolean")
    if not isinstance(value, types):
        raise PayloadError(f"{what}: field '{name}' must be {_type_names(types)}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise PayloadError(f"{what}: field '{name}' must be finite")
    if isinstance(value, str) and "\x00" in value and not nul:
        # No text column of PostgreSQL holds one: the batch's write would fail each time ingest retried it.
        raise PayloadError(f"{what}: field '{name}' contains a NUL character")
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {int: "a number", float: "a number", str: "a string", dict: "an object", bool: "a boolean",
             list: "a list", type(None): "null"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _seq(data: dict[str, Any], what: str) -> int:
    seq = _field(data, "seq", int, what)
    if seq < 1:
        raise PayloadError(f"{what}: field 'seq' must be >= 1, got {seq}")
    return seq


def _ts(data: dict[str, Any], what: str, name: str = "ts") -> float:
    ts = float(_field(data, name, (int, float), what))
    if ts < 0:
        raise PayloadError(f"{what}: field '{name}' must be a unix time, got {ts}")
    return ts


MetricValue = float | int | str
_METRIC_NAMES_SEEN: set[str] = set()  # names that passed check_segment (a few dozen in practice)


@dataclass
class Telemetry:
    seq: int
    ts: float
    values: dict[str, MetricValue]

    def encode(self) -> bytes:
        return _dump(self)

    @classmethod
    def decode(cls, payload: bytes | str) -> Telemetry:
        what = "telemetry"
        data = _load(payload, what)
        values = _field(data, "values", dict, what)
        for name, value in values.items():
            if name not in _METRIC_NAMES_SEEN:
                check_segment(name, f"{what}: metric name")
                if len(_METRIC_NAMES_SEEN) < 10_000:
                    _METRIC_NAMES_SEEN.add(name)
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise PayloadError(f"{what}: metric '{name}' must be a number or a string")
            if isinstance(value, str) and name in NUMERIC_METRICS:
                raise PayloadError(f"{what}: metric '{name}' must be a number, got the string {value[:20]!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise PayloadError(f"{what}: metric '{name}' must be finite")
            if isinstance(value, str) and len(value) > 256:
                raise PayloadError(f"{what}: metric '{name}' string is longer than 256 characters")
        return cls(seq=_seq(data, what), ts=_ts(data, what), values=values)


@dataclass
class Event:
    seq: int
    ts: float
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return _dump(self)

    @classmethod
    def decode(cls, payload: bytes | str) -> Event:
        what = "event"
        data = _load(payload, what)
        etype = check_segment(_field(data, "type", str, what), f"{what}: type")
        body = _field(data, "data", dict, what, optional=True, default={})
        if etype == ATTENDANCE_EVENT:
            _check_attendance(body, what)
        if etype in EVENT_TEXTS:
            reported_text(body, f"{what} data", EVENT_TEXTS[etype])  # a msgid or params out of bounds: refused
        return cls(seq=_seq(data, what), ts=_ts(data, what), type=etype, data=body)


def attendance_data(person: str, camera: str) -> dict[str, str]:
    """The data of an ATTENDANCE_EVENT: the check-in's pseudonym and the camera that saw it."""
    return {"person": person, "camera": camera}


def _check_attendance(data: dict[str, Any], what: str) -> None:
    """An attendance event carries a pseudonym, never the code itself. Messages name the field and never
    repeat its value: a malformed `person` may be a raw code, and a refusal is logged."""
    extra = sorted(set(data) - set(ATTENDANCE_FIELDS))
    if extra:
        raise PayloadError(f"{what}: field 'data.{extra[0][:40]}' is not allowed in an attendance event (only "
                           "'person', the code's pseudonym, and 'camera': a QR code never leaves the gateway)")
    person = _field(data, "person", str, f"{what} data")
    if not _PSEUDONYM.match(person):
        raise PayloadError(f"{what} data: field 'person' must be a pseudonym (64 lower-case hex digits)")
    check_segment(_field(data, "camera", str, f"{what} data"), f"{what} data: camera")


@dataclass
class State:
    online: bool
    ts: float
    agent: str = ""
    boot: float = 0.0
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    config_version: int | None = None
    room: str = ""
    building: str = ""
    # Seconds between two `state` messages at most: central calls a gateway silent after 3.
    interval: float = 0.0
    # Outbox figures: `pending` messages held (until central acknowledges them), of which `unacked`
    # were accepted by the broker already; `dropped` by the outbox bounds; `last_seq`; the outbox's
    # `instance`; `oldest`, the lowest seq still held (last_seq + 1 when none: central's watermark
    # may pass every seq below it), and `oldest_age`, that row's age in whole seconds.
    outbox: dict[str, int] = field(default_factory=dict)
    # When the agent's current MQTT connection began. The Last Will is fixed at connect, so its `ts`
    # is older than that connection's heartbeats; `since` tells central it is still the current one.
    since: float = 0.0
    # The gateway's own storage: {"status": "ok"}, or "full"/"error" with `since` and `error` (what failed).
    # Devices keep their own status: a full disk is the gateway's problem, not the projector's.
    storage: dict[str, Any] = field(default_factory=dict)
    # Set when the outbox file was found damaged, set aside and replaced by a new one (a new instance):
    # `at`, `reason`, `kept_as` (the file name kept for forensics), `lost` (unsent messages it held; null
    # when they cannot be counted), `previous_instance` and `previous_last_seq` (null when unreadable).
    outbox_replaced: dict[str, Any] | None = None
    # Why a device is in fault or offline, as the gateway wrote it (issue 20): {device: {"detail"[, "detail_msgid",
    # "detail_params"]}} (`text_fields`: English, cut to DEVICE_DETAIL_CHARS, and its marked text). Beside
    # `devices`, whose values stay strings (every central before this reads them so); left out when empty.
    device_details: dict[str, dict[str, Any]] = field(default_factory=dict)

    def encode(self) -> bytes:
        if self.device_details:
            return _dump(self)
        data = asdict(self)
        del data["device_details"]  # a state from before reads the same
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def decode(cls, payload: bytes | str) -> State:
        what = "state"
        data = _load(payload, what)
        devices = _field(data, "devices", dict, what, optional=True, default={})
        for dev, info in devices.items():
            check_segment(dev, f"{what}: device")
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise PayloadError(f"{what}: devices.{dev} must be an object of strings")
            status = info.get("status")
            if status is not None and status not in DEVICE_STATUSES:
                raise PayloadError(f"{what}: devices.{dev}.status {status!r} is not one of {DEVICE_STATUSES}")
        version = _field(data, "config_version", (int, type(None)), what, optional=True)
        outbox = _field(data, "outbox", dict, what, optional=True, default={})
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in outbox.values()):
            raise PayloadError(f"{what}: outbox figures must be whole numbers")
        # Counts, seqs and ages: never negative, and within what every database column holds (a 2**70
        # would otherwise fail each write of its batch, and ingest retries a failed batch for ever).
        for key, value in outbox.items():
            if not 0 <= value <= (_INSTANCE_MAX if key == "instance" else _INT_MAX):
                raise PayloadError(f"{what}: outbox.{key} {value} is out of range")
        interval = float(_field(data, "interval", (int, float), what, optional=True, default=0.0))
        return cls(online=_field(data, "online", bool, what), ts=_ts(data, what), interval=interval, outbox=outbox,
                   storage=_storage(data, what), outbox_replaced=_replacement(data, what),
                   room=_name(data, "room", names.ROOM_MAX, what),
                   building=_name(data, "building", names.BUILDING_MAX, what),
                   agent=_field(data, "agent", str, what, optional=True, default=""),
                   boot=float(_field(data, "boot", (int, float), what, optional=True, default=0.0)),
                   since=float(_field(data, "since", (int, float), what, optional=True, default=0.0)),
                   devices=devices, config_version=version, device_details=_device_details(data, devices, what))


DEVICE_DETAIL_CHARS = 200  # a device's fault or offline reason (`State.device_details`) is cut to this
DEVICE_DETAILS_BYTES = 16 * 1024  # the agent sends reasons within this (JSON), far below MAX_PAYLOAD_BYTES


def _device_details(data: dict[str, Any], devices: dict[str, Any], what: str) -> dict[str, dict[str, Any]]:
    """A state's `device_details`, from a gateway: each a device of its `devices`, each a text as `reported_text`
    takes it (bounded, refused naming the field); kept as `text_fields` writes it (JSON, in the gateway's row)."""
    details = _field(data, "device_details", dict, what, optional=True, default={})
    out: dict[str, dict[str, Any]] = {}
    for dev, part in details.items():
        if dev not in devices:
            raise PayloadError(f"{what}: field 'device_details.{dev[:40]}' names no device of 'devices'")
        if not isinstance(part, dict):
            raise PayloadError(f"{what}: field 'device_details.{dev}' must be an object, got {type(part).__name__}")
        out[dev] = text_fields(reported_text(part, f"{what}: device_details.{dev}"), DEVICE_DETAIL_CHARS)
    return out


def device_detail(part: dict[str, Any] | None) -> str | ReportedText | None:
    """A device's reason as central shows it (from `State.device_details`, stored as decoded): a ReportedText
    when the gateway marked it, its English when not, None without one."""
    return marked_text(part)


def _storage(data: dict[str, Any], what: str) -> dict[str, Any]:
    storage = _field(data, "storage", dict, what, optional=True, default={})
    if not storage:
        return {}
    status = storage.get("status")
    if status not in STORAGE_STATUSES:
        raise PayloadError(f"{what}: storage.status {status!r} is not one of {STORAGE_STATUSES}")
    out: dict[str, Any] = {"status": status}
    if status != "ok":
        since = _field(storage, "since", (int, float, type(None)), f"{what}: storage", optional=True)
        out["since"] = None if since is None else float(since)
        out["error"] = _field(storage, "error", str, f"{what}: storage", optional=True, default="")[:200]
    return out


def _replacement(data: dict[str, Any], what: str) -> dict[str, Any] | None:
    rep = _field(data, "outbox_replaced", (dict, type(None)), what, optional=True)
    if rep is None:
        return None
    where = f"{what}: outbox_replaced"
    out: dict[str, Any] = {"at": _ts(rep, where, "at"),
                           **text_fields(reported_text(rep, where, "reason"), REPLACED_REASON_CHARS, "reason"),
                           "kept_as": _field(rep, "kept_as", str, where, optional=True, default="")[:200]}
    for name in ("lost", "previous_instance", "previous_last_seq"):
        value = _field(rep, name, (int, type(None)), where, optional=True)
        if value is not None and value < 0:
            raise PayloadError(f"{where}: field '{name}' must be >= 0, got {value}")
        out[name] = value
    return out


def _name(data: dict[str, Any], key: str, max_chars: int, what: str) -> str:
    """A room or building name a gateway reports: `campus.names` rules; a longer one is cut, as before."""
    try:
        return names.display_name(_field(data, key, str, what, optional=True, default="")[:max_chars],
                                  f"{what}: {key}", max_chars=max_chars, required=False)
    except ConfigError as exc:
        raise PayloadError(str(exc)) from None


@dataclass
class Command:
    id: str
    action: str
    params: dict[str, Any]
    deadline: float
    by: str = ""
    # When central issued it (central's clock; 0: not said, an older central). An agent whose command
    # journal was lost refuses an unknown command issued before its new journal began: it may have run.
    ts: float = 0.0

    def encode(self) -> bytes:
        return _dump(self)

    @classmethod
    def decode(cls, payload: bytes | str) -> Command:
        what = "command"
        data = _load(payload, what)
        cid = _field(data, "id", str, what)
        if not cid or len(cid) > 64:
            raise PayloadError(f"{what}: field 'id' must be 1 to 64 characters")
        action = _field(data, "action", str, what)
        if not re.match(r"^[a-z][a-z0-9_]{0,31}$", action):
            raise PayloadError(f"{what}: field 'action' {action!r} is not an action name")
        return cls(id=cid, action=action, params=_field(data, "params", dict, what, optional=True, default={}),
                   deadline=_ts(data, what, "deadline"),
                   by=_field(data, "by", str, what, optional=True, default=""),
                   ts=_ts(data, what) if "ts" in data else 0.0)


# Text the gateway writes for people (issue 20): a command result's `detail`, and a podium or edge-schedule
# step's. `detail` stays the English, for every reader before this addition; beside it the agent sends the
# message it marked for translation (campus/i18n.py), `detail_msgid`, and its named parameters,
# `detail_params` ({name: string or number}), so central shows it in the reader's language
# (campus.i18n.ReportedText). A parameter may itself be a marked text (a device's words inside a refusal: the
# LG NG meaning, "the power query"), sent as {"msgid", "params"} whose params are scalars: one level deep, a
# deeper one goes as its English. Both are optional (an older agent sends neither), and both come from a
# gateway: the msgid is at most TEXT_MSGID_MAX characters, the parameters at most TEXT_PARAMS_MAX named like
# identifiers, a string at most TEXT_PARAM_CHARS; anything else is refused naming the field. Central
# translates only a msgid its catalog has, and only when the parameters fit it exactly; else the English.
TEXT_MSGID_MAX = 300
STEP_DETAIL_CHARS = 200  # a podium or schedule step's English detail is cut to this
TEXT_PARAMS_MAX = 8
TEXT_PARAM_CHARS = 200
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
_PARAM_INT_MAX = 2**53  # every JSON reader keeps it exact


def _param(value: Any, nested: bool = True) -> str | int | float | dict[str, Any]:
    """A parameter as the contract carries it: a scalar within the bounds, or (`nested`) a marked text as its
    own {"msgid", "params"} whose params are scalars (one level: deeper ones go as their English). The agent's
    side: never refused."""
    if isinstance(value, LazyText):
        if nested and value.msgid and len(value.msgid) <= TEXT_MSGID_MAX and not isinstance(value, ReportedText):
            return {"msgid": value.msgid,
                    "params": {str(k): _param(v, nested=False) for k, v in list(value.params.items())[:TEXT_PARAMS_MAX]}}
        value = str(value)
    if nested and isinstance(value, dict) and isinstance(value.get("msgid"), str):  # one decoded (CommandResult.of)
        inner = value.get("params") if isinstance(value.get("params"), dict) else {}
        return {"msgid": value["msgid"][:TEXT_MSGID_MAX],
                "params": {str(k): _param(v, nested=False) for k, v in list(inner.items())[:TEXT_PARAMS_MAX]}}
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) \
            or (isinstance(value, float) and not math.isfinite(value)) \
            or (isinstance(value, int) and abs(value) > _PARAM_INT_MAX):
        value = str(value)
    return value[:TEXT_PARAM_CHARS].replace("\x00", "\ufffd") if isinstance(value, str) else value


def text_fields(text: str | LazyText, max_chars: int | None = None, key: str = "detail") -> dict[str, Any]:
    """The payload fields of a text the agent writes: `detail` (English, cut to `max_chars`) and, for a text
    marked for translation (a LazyText), `detail_msgid` and `detail_params` (the agent's side of
    `reported_text`). `key` names them otherwise (`error`, `error_msgid`, `error_params`: EVENT_TEXTS)."""
    english = str(text)[:max_chars]
    if not isinstance(text, LazyText) or not text.msgid or len(text.msgid) > TEXT_MSGID_MAX:
        return {key: english}
    params = {str(k): _param(v) for k, v in list(text.params.items())[:TEXT_PARAMS_MAX]}
    return {key: english, f"{key}_msgid": text.msgid, f"{key}_params": params}


def reported_text(data: dict[str, Any], what: str, key: str = "detail") -> str | ReportedText:
    """The text of a payload part (`detail`, `detail_msgid`, `detail_params`; or those of another `key`) as
    central keeps it: the English alone (an older agent), or a ReportedText. PayloadError naming the field for a
    msgid or params out of bounds."""
    # A detail is a device's own words, and the outcome must be kept: its NULs (which no PostgreSQL text
    # holds) become U+FFFD.
    detail = _field(data, key, str, what, optional=True, default="", nul=True).replace("\x00", "\ufffd")
    if f"{key}_msgid" not in data and f"{key}_params" not in data:
        return detail
    msgid = _field(data, f"{key}_msgid", str, what)
    if not 0 < len(msgid) <= TEXT_MSGID_MAX:
        raise PayloadError(f"{what}: field '{key}_msgid' must be 1 to {TEXT_MSGID_MAX} characters")
    params = _text_params(data, f"{key}_params", what, nested=True)
    return ReportedText(detail, msgid, params)


def marked_text(part: dict[str, Any] | None, key: str = "detail") -> str | ReportedText | None:
    """A text as central stored it from a decoded payload (`text_fields`' fields under `key`: a state's
    `device_details`, an event's `error` or `reason`): a ReportedText when the gateway marked it, its English
    when not, None without one. Shown with dashboards.i18n.gateway_text."""
    if not isinstance(part, dict) or not isinstance(part.get(key), str):
        return None
    msgid, params = part.get(f"{key}_msgid"), part.get(f"{key}_params")
    if isinstance(msgid, str) and msgid:
        return ReportedText(part[key], msgid, params if isinstance(params, dict) else {})
    return part[key]


def _text_params(data: dict[str, Any], where: str, what: str, *, nested: bool) -> dict[str, Any]:
    """A marked text's parameters from a gateway: at most TEXT_PARAMS_MAX, named like identifiers, each a string
    (at most TEXT_PARAM_CHARS, no NUL) or a finite number; with `nested`, also a marked text of its own
    ({"msgid", "params"}, whose params are scalars: one level deep, no more). PayloadError naming the field."""
    params = data.get(where.rpartition(".")[2], {})
    if not isinstance(params, dict):
        raise PayloadError(f"{what}: field '{where}' must be an object, got {type(params).__name__}")
    if len(params) > TEXT_PARAMS_MAX:
        raise PayloadError(f"{what}: field '{where}' has {len(params)} entries, at most {TEXT_PARAMS_MAX}")
    for name, value in params.items():
        if not _PARAM_NAME.fullmatch(name):
            raise PayloadError(f"{what}: field '{where}' has the key {name[:40]!r}, not a parameter name")
        field_name = f"{where}.{name}"
        if nested and isinstance(value, dict):
            if set(value) - {"msgid", "params"}:
                raise PayloadError(f"{what}: field '{field_name}' has keys other than 'msgid' and 'params'")
            msgid = value.get("msgid")
            if not isinstance(msgid, str) or not 0 < len(msgid) <= TEXT_MSGID_MAX or "\x00" in msgid:
                raise PayloadError(f"{what}: field '{field_name}.msgid' must be a string of 1 to {TEXT_MSGID_MAX} "
                                   "characters, without NUL")
            _text_params(value, f"{field_name}.params", what, nested=False)
            continue
        # a string or a number, finite, without NUL
        _field({field_name: value}, field_name, (str, int, float), what)
        if isinstance(value, str) and len(value) > TEXT_PARAM_CHARS:
            raise PayloadError(f"{what}: field '{field_name}' is longer than {TEXT_PARAM_CHARS} characters")
        if isinstance(value, int) and abs(value) > _PARAM_INT_MAX:
            raise PayloadError(f"{what}: field '{field_name}' is out of range")
    return params


@dataclass
class CommandResult:
    id: str
    status: str
    detail: str
    ts: float
    # Allocated by the agent's outbox like a telemetry or event seq, so central's acknowledgement
    # (`Ack`) covers every row of the outbox; None from an agent before acknowledgements.
    seq: int | None = None
    # The detail marked for translation (see TEXT_MSGID_MAX above); "" and {}: not marked (an older agent).
    detail_msgid: str = ""
    detail_params: dict[str, Any] = field(default_factory=dict)  # scalars, or a nested {msgid, params}

    @classmethod
    def of(cls, id: str, status: str, text: str | LazyText, ts: float, seq: int | None = None) -> CommandResult:
        """The result of a command whose detail is `text` (marked for translation or not)."""
        fields = text_fields(text)
        return cls(id=id, status=status, ts=ts, seq=seq, detail=fields["detail"],
                   detail_msgid=fields.get("detail_msgid", ""), detail_params=fields.get("detail_params", {}))

    @property
    def text(self) -> str | ReportedText:
        """The detail as central keeps it: a ReportedText when the agent marked it, else its English."""
        return ReportedText(self.detail, self.detail_msgid, self.detail_params) if self.detail_msgid else self.detail

    def encode(self) -> bytes:
        data = asdict(self)
        if self.seq is None:
            del data["seq"]  # not `null`: a central from before reads the result as it always did
        if not self.detail_msgid:
            del data["detail_msgid"], data["detail_params"]
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def decode(cls, payload: bytes | str) -> CommandResult:
        what = "command result"
        data = _load(payload, what)
        status = _field(data, "status", str, what)
        if status not in FINAL_COMMAND_STATUSES:
            raise PayloadError(f"{what}: status {status!r} is not one of {FINAL_COMMAND_STATUSES}")
        # Central stores both; PostgreSQL text cannot hold a NUL and refuses the whole batch (ingest would
        # retry it for ever). An id with one names no command central issued: refused. The detail's NULs
        # become U+FFFD (`reported_text`).
        cid = _field(data, "id", str, what, nul=True)
        if not cid or len(cid) > 64 or "\x00" in cid:
            raise PayloadError(f"{what}: field 'id' must be 1 to 64 characters, without NUL")
        text = reported_text(data, what)
        return cls.of(cid, status, text, _ts(data, what), _seq(data, what) if "seq" in data else None)


# Outbox instances are drawn below 2**53 (edge_agent/outbox.py): every JSON reader keeps them exact.
_INSTANCE_MAX = 2**53


def _instance(data: dict[str, Any], what: str) -> int:
    instance = _field(data, "instance", int, what)
    if not 0 < instance <= _INSTANCE_MAX:
        raise PayloadError(f"{what}: field 'instance' must be 1 to 2**53, got {instance}")
    return instance


@dataclass
class Ack:
    """Central to one agent (`ack_topic`, QoS 1, retained): every seq of outbox `instance` up to `seq`
    is stored (or was dropped by the agent's own bounds, which it reports in `state.outbox`), so the
    agent may delete those rows. An agent ignores an Ack for another instance (an old SD card's)."""
    instance: int
    seq: int
    ts: float

    def encode(self) -> bytes:
        return _dump(self)

    @classmethod
    def decode(cls, payload: bytes | str) -> Ack:
        what = "ack"
        data = _load(payload, what)
        seq = _field(data, "seq", int, what)
        if seq < 0:
            raise PayloadError(f"{what}: field 'seq' must be >= 0, got {seq}")
        return cls(instance=_instance(data, what), seq=seq, ts=_ts(data, what))


@dataclass
class IngestState:
    """An ingest worker's presence (`ingest_state_topic`, QoS 1, retained; its Last Will says
    `online: false`). Published online only once the worker's subscriptions are acknowledged.
    `instance` changes whenever the worker starts without its broker session (a new process, or a
    session the broker lost or expired): what the broker accepted for it before may be gone, so
    agents send again everything central has not acknowledged."""
    online: bool
    instance: int
    ts: float

    def encode(self) -> bytes:
        return _dump(self)

    @classmethod
    def decode(cls, payload: bytes | str) -> IngestState:
        what = "ingest state"
        data = _load(payload, what)
        return cls(online=_field(data, "online", bool, what), instance=_instance(data, what), ts=_ts(data, what))
