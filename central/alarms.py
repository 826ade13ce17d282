"""The alarm engine: rules a facility manager can tune, alarms raised and cleared by them.

A rule (`AlarmRule` in the registry) has a kind from `RULE_KINDS` and its
parameters (a CO2 limit, a temperature range, ...). `evaluate()` looks at
what the ledger knows now (gateways online/last seen, device status, the
latest value of every metric) and, per rule, gateway and device:

* raises an `Alarm` when a condition starts: at most one open alarm per
  (rule, gateway, device), however often evaluation runs;
* says nothing about a gateway that is registered but has never sent a
  message: it is "not installed yet" (a district registers whole schools
  before the gateways are mounted), and its alarms start with its first
  message;
* clears it (`cleared_at`) when the condition ends, or when its rule is
  disabled; values of a gateway or device that is offline are unknown, so
  their metric alarms are held open (the offline alarm says why) rather
  than cleared on stale data;
* never touches acknowledgement: a manager acknowledges (who, when) an
  alarm whether or not it has cleared, and clearing does not acknowledge.

The rule logic is pure (`conditions()` over a `Snapshot`), so tests drive
it with plain data; `AlarmMonitor` runs `evaluate()` every few seconds in a
background thread of `Central` (central/service.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload

from campus import contract
from campus.i18n import N_, LazyText, lazy_gettext
from central.db import translatable
from central.notify import outbox as notify_outbox
from central.registry import Alarm, AlarmRule, Building, Gateway, Registry, Room
from central.workers import LeasedWorker

log = logging.getLogger(__name__)

Key = tuple[int, str, str]  # (rule id, gateway, device); device "" for a gateway-wide alarm


class RuleError(ValueError):
    """A rule's parameters are not acceptable; the message (a LazyText) says which and why, for people."""


@dataclass(frozen=True)
class Param:
    name: str
    label: str
    unit: str
    low: float
    high: float
    step: float = 1.0


@dataclass(frozen=True)
class RuleKind:
    kind: str
    label: str
    description: str
    params: tuple[Param, ...] = ()
    # Metric rules judge values; values of an offline device are unknown, so their alarms are held.
    uses_values: bool = True


RULE_KINDS: dict[str, RuleKind] = {k.kind: k for k in (
    # Labels and descriptions are English, marked (campus/i18n.py N_): the pages and the API show them translated.
    RuleKind("co2_above", N_("CO2 too high"), N_("Raised when a room's CO2 concentration is above the limit."),
             (Param("ppm", N_("CO2 limit"), "ppm", 400, 10000),)),
    RuleKind("temperature_range", N_("Temperature out of range"),
             N_("Raised when a room's temperature is below the lowest or above the highest value."),
             (Param("min", N_("Lowest"), "°C", -30, 60, 0.5), Param("max", N_("Highest"), "°C", -30, 60, 0.5))),
    RuleKind("lamp_hours_above", N_("Projector lamp worn"),
             N_("Raised when a projector lamp has run longer than this: plan a lamp change."),
             (Param("hours", N_("Lamp hours limit"), "h", 1, 100000),)),
    RuleKind("projector_error", N_("Projector error"),
             N_("Raised when a projector reports any error or warning (fan, lamp, temperature, cover, filter, "
                "other)."),
             ()),
    RuleKind("offline_minutes", N_("Offline too long"),
             N_("Raised when a gateway, or a device on an online gateway, has been offline longer than this."),
             (Param("minutes", N_("Offline for more than"), "min", 1, 10080),), uses_values=False),
)}

FALLBACK_DEFAULTS: dict[str, dict[str, float]] = {
    "co2_above": {"ppm": 1500},
    "temperature_range": {"min": 16, "max": 30},
    "lamp_hours_above": {"hours": 3000},
    "projector_error": {},
    "offline_minutes": {"minutes": 10},
}


def default_params() -> dict[str, dict[str, float]]:
    """Defaults for new rules: the limits the shipped device profiles give, else sensible constants."""
    out = {kind: dict(params) for kind, params in FALLBACK_DEFAULTS.items()}
    try:
        from device_profiles import load_profile

        env = load_profile("env-6in1-modbus").health
        out["co2_above"]["ppm"] = env.get("co2_ppm", {}).get("max", out["co2_above"]["ppm"])
        temp = env.get("temperature_c", {})
        out["temperature_range"] = {"min": temp.get("min", 16), "max": temp.get("max", 30)}
        lamp = load_profile("projector-pjlink").health.get("lamp_hours", {})
        out["lamp_hours_above"]["hours"] = lamp.get("max", out["lamp_hours_above"]["hours"])
    except Exception:  # noqa: BLE001 - a broken profile must not stop alarms; the constants are fine
        log.warning("alarm defaults: cannot read device profiles; using built-in values", exc_info=True)
    return out


# ---------------------------------------------------------------- parameters


def _number(raw: Any, param: Param) -> float:
    label, unit = LazyText(param.label), param.unit
    if isinstance(raw, bool) or raw is None or (isinstance(raw, str) and not raw.strip()):
        raise RuleError(lazy_gettext("%(what)s (%(unit)s) must be a number", what=label, unit=unit))
    try:
        value = float(raw.strip().replace(",", ".")) if isinstance(raw, str) else float(raw)
    except (TypeError, ValueError):
        raise RuleError(lazy_gettext("%(what)s (%(unit)s) must be a number, got %(value)s", what=label, unit=unit,
                                     value=repr(str(raw)[:30]))) from None
    if not math.isfinite(value):
        raise RuleError(lazy_gettext("%(what)s (%(unit)s) must be a finite number", what=label, unit=unit))
    if not param.low <= value <= param.high:
        raise RuleError(lazy_gettext("%(what)s (%(unit)s) must be between %(low)s and %(high)s, got %(value)s",
                                     what=label, unit=unit, low=format(param.low, "g"), high=format(param.high, "g"),
                                     value=format(value, "g")))
    return int(value) if value.is_integer() else value


def validate_params(kind: str, raw: Mapping[str, Any]) -> dict[str, float]:
    """Check and normalise a rule's parameters (numbers from a form or JSON); RuleError if wrong."""
    spec = RULE_KINDS.get(kind)
    if spec is None:
        raise RuleError(lazy_gettext("unknown rule kind %(kind)s; kinds: %(kinds)s", kind=repr(kind),
                                     kinds=", ".join(RULE_KINDS)))
    params = {p.name: _number(raw.get(p.name), p) for p in spec.params}
    if kind == "temperature_range" and params["min"] >= params["max"]:
        raise RuleError(lazy_gettext("the lowest temperature (%(min)s °C) must be below the highest (%(max)s °C)",
                                     min=format(params['min'], "g"), max=format(params['max'], "g")))
    return params


# ---------------------------------------------------------------- rules in the registry


@dataclass(frozen=True)
class Rule:
    id: int
    kind: str
    params: dict[str, Any]
    enabled: bool

    def as_dict(self) -> dict[str, Any]:
        spec = RULE_KINDS.get(self.kind)
        # Label and description: LazyText, shown in the reader's language (str() is English).
        return {"id": self.id, "kind": self.kind, "label": LazyText(spec.label) if spec else self.kind,
                "description": LazyText(spec.description) if spec else "", "params": dict(self.params),
                "enabled": self.enabled}


_seed_lock = threading.Lock()


def ensure_default_rules(registry: Registry) -> list[Rule]:
    """Every rule, oldest first; seeds one rule per kind that has none (first use, or a new kind).

    One rule per kind is a unique constraint: two web instances seeding an empty database at once
    make each rule once (the second's insert of a kind is skipped), so no condition is raised twice."""
    with _seed_lock:
        with registry.session() as s:
            have = set(s.scalars(select(AlarmRule.kind)))
        missing = [k for k in RULE_KINDS if k not in have]
        if missing:
            defaults = default_params()
            for kind in missing:
                try:
                    with registry.session() as s:
                        s.add(AlarmRule(kind=kind, params=defaults[kind], enabled=True))
                except IntegrityError:
                    pass  # another instance made it first: theirs is the one
        with registry.session() as s:
            rows = list(s.scalars(select(AlarmRule).order_by(AlarmRule.id)))
            return [Rule(r.id, r.kind, dict(r.params or {}), bool(r.enabled)) for r in rows]


def list_rules(registry: Registry) -> list[dict[str, Any]]:
    return [r.as_dict() for r in ensure_default_rules(registry)]


def update_rule(registry: Registry, rule_id: int, raw_params: Mapping[str, Any],
                enabled: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate and store new parameters; returns (before, after). RuleError/LookupError change nothing."""
    with registry.session() as s:
        row = s.get(AlarmRule, rule_id)
        if row is None:
            raise LookupError(f"no alarm rule {rule_id}")
        params = validate_params(row.kind, raw_params)  # raises before anything is written
        before = Rule(row.id, row.kind, dict(row.params or {}), bool(row.enabled)).as_dict()
        row.params = params
        row.enabled = enabled
        return before, Rule(row.id, row.kind, params, enabled).as_dict()


# ---------------------------------------------------------------- what the ledger knows


@dataclass
class Snapshot:
    """Everything the rules look at, at one moment (plain data: tests build it by hand)."""
    gateways: list[dict[str, Any]]                       # ledger: id, online, last_seen
    devices: list[dict[str, Any]]                        # ledger: gateway, id, kind, status
    latest: dict[tuple[str, str], dict[str, Any]]        # (gateway, device) -> {metric: value}
    device_seen: dict[tuple[str, str], float] = field(default_factory=dict)  # newest sample per device
    registered: dict[str, float] = field(default_factory=dict)  # registry gateway -> created

    def not_installed(self) -> set[str]:
        """Registered gateways that never sent a message: their alarms start with their first one."""
        return set(self.registered) - {g["id"] for g in self.gateways}

    def offline_gateways(self) -> set[str]:
        return {g["id"] for g in self.gateways if not g["online"]} | self.not_installed()

    def offline_devices(self) -> set[tuple[str, str]]:
        return {(d["gateway"], d["id"]) for d in self.devices if d["status"] == "offline"}


def snapshot(registry: Registry, ledger: Any) -> Snapshot:
    """What the rules look at now: ledger and registry joined by central/overview.py (imported here, not at
    the top, because overview reads the alarms too)."""
    from central.overview import alarm_snapshot

    return alarm_snapshot(registry, ledger)


# ---------------------------------------------------------------- the rules themselves


@dataclass(frozen=True)
class Condition:
    rule_id: int
    gateway: str
    device: str
    message: str | LazyText  # stored as it is (central/db.py TranslatableText): shown in each reader's language
    value: str

    @property
    def key(self) -> Key:
        return (self.rule_id, self.gateway, self.device)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _bad_error_value(metric: str, value: Any) -> str | None:
    """The error_* value if it is not `ok` (numbers are enum indexes from stores without strings)."""
    if isinstance(value, str):
        return None if value == "ok" else value
    n = _num(value)
    if n is None:
        return None
    enum = contract.metric_enum(metric) or ("ok",)
    if n.is_integer() and 0 <= int(n) < len(enum):
        return None if int(n) == 0 else enum[int(n)]
    return f"{n:g}"


# Alarm.value is VARCHAR(100), which PostgreSQL enforces (SQLite stored anything); a valid reading may be
# 1e308, whose "%.0f" has 309 digits. Past 15 digits a number is written with an exponent.
VALUE_MAX = 100


def _num_text(v: float, decimals: int = 0) -> str:
    return f"{v:.{decimals}f}" if abs(v) < 1e15 else f"{v:.6g}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def conditions(rules: Iterable[Rule], snap: Snapshot, now: float) -> dict[Key, Condition]:
    """Every alarm condition that holds now, by (rule, gateway, device). Pure."""
    out: dict[Key, Condition] = {}
    offline_gws = snap.offline_gateways()
    offline_devs = snap.offline_devices()

    def add(rule: Rule, gateway: str, device: str, message: LazyText, value: str) -> None:
        out[(rule.id, gateway, device)] = Condition(rule.id, gateway, device, message, value[:VALUE_MAX])

    for rule in rules:
        if not rule.enabled or rule.kind not in RULE_KINDS:
            continue
        p = rule.params
        if rule.kind == "offline_minutes":
            limit = float(p.get("minutes", 10)) * 60
            # Only gateways the ledger knows, that is that sent something: one registered but never heard
            # of is not installed yet (districts register whole schools at once), not offline.
            for gw in snap.gateways:
                if gw["online"]:
                    continue
                since = gw["last_seen"] or snap.registered.get(gw["id"])
                if since is None or now - since >= limit:
                    ago = (lazy_gettext("last seen %(ago)s ago", ago=_minutes(now - since)) if gw["last_seen"]
                           else lazy_gettext("no heartbeat received"))
                    add(rule, gw["id"], "", lazy_gettext("Gateway offline for more than %(minutes)s min (%(ago)s)",
                                                         minutes=format(p.get('minutes', 10), "g"), ago=ago),
                        _minutes(now - since) if since else "")
            for dev in snap.devices:
                key = (dev["gateway"], dev["id"])
                if dev["status"] != "offline" or dev["gateway"] in offline_gws:
                    continue  # an offline gateway's devices: the gateway alarm says it all
                seen = snap.device_seen.get(key)
                if seen is None or now - seen >= limit:
                    ago = (lazy_gettext("last value %(ago)s ago", ago=_minutes(now - seen)) if seen
                           else lazy_gettext("no value ever received"))
                    add(rule, dev["gateway"], dev["id"],
                        lazy_gettext("Device offline for more than %(minutes)s min (%(ago)s)",
                                     minutes=format(p.get('minutes', 10), "g"), ago=ago),
                        _minutes(now - seen) if seen else "")
            continue
        for (gateway, device), values in sorted(snap.latest.items()):
            if gateway in offline_gws or (gateway, device) in offline_devs:
                continue  # stale values say nothing about now
            if rule.kind == "co2_above":
                v = _num(values.get("co2_ppm"))
                if v is not None and v > float(p.get("ppm", 1500)):
                    add(rule, gateway, device,
                        lazy_gettext("CO2 %(value)s ppm is above the limit of %(limit)s ppm", value=_num_text(v),
                                     limit=format(p.get('ppm', 1500), "g")),
                        f"{_num_text(v)} ppm")
            elif rule.kind == "temperature_range":
                v = _num(values.get("temperature_c"))
                lo, hi = float(p.get("min", 16)), float(p.get("max", 30))
                if v is not None and v < lo:
                    add(rule, gateway, device, lazy_gettext("Temperature %(value)s °C is below %(limit)s °C",
                                                            value=_num_text(v, 1), limit=format(lo, "g")),
                        f"{_num_text(v, 1)} °C")
                elif v is not None and v > hi:
                    add(rule, gateway, device, lazy_gettext("Temperature %(value)s °C is above %(limit)s °C",
                                                            value=_num_text(v, 1), limit=format(hi, "g")),
                        f"{_num_text(v, 1)} °C")
            elif rule.kind == "lamp_hours_above":
                v = _num(values.get("lamp_hours"))
                if v is not None and v > float(p.get("hours", 3000)):
                    add(rule, gateway, device, lazy_gettext(
                        "Projector lamp has run %(value)s h, past the limit of %(limit)s h: plan a lamp change",
                        value=_num_text(v), limit=format(p.get('hours', 3000), "g")), f"{_num_text(v)} h")
            elif rule.kind == "projector_error":
                bad = {m: b for m, v in sorted(values.items()) if m.startswith("error_")
                       and (b := _bad_error_value(m, v)) is not None}
                if bad:
                    text = ", ".join(f"{m.removeprefix('error_')} {b}" for m, b in bad.items())
                    add(rule, gateway, device, lazy_gettext("Projector reports: %(errors)s", errors=text), text)
    return out


def held_keys(rules: Iterable[Rule], snap: Snapshot) -> Callable[[Key], bool]:
    """Whether an open alarm cannot be judged now (its values are stale: device or gateway offline)."""
    value_rules = {r.id for r in rules if r.enabled and r.kind in RULE_KINDS and RULE_KINDS[r.kind].uses_values}
    offline_gws, offline_devs = snap.offline_gateways(), snap.offline_devices()
    return lambda key: key[0] in value_rules and (key[1] in offline_gws or (key[1], key[2]) in offline_devs)


# ---------------------------------------------------------------- raising and clearing

_evaluate_lock = threading.Lock()


@dataclass
class Outcome:
    raised: list[int] = field(default_factory=list)
    cleared: list[int] = field(default_factory=list)


def evaluate(registry: Registry, ledger: Any, now: float | None = None,
             snap: Snapshot | None = None) -> Outcome:
    """Raise alarms whose condition started, clear those whose condition ended; returns the alarm ids.

    Without `snap`, what the rules look at is read with their limits in SQL (central/overview.py
    `alarm_candidates`: offline gateways and devices, values past a limit, the gateways of open alarms), so
    a round costs what the district's problems cost, not what its rooms do; the open alarms are read as
    columns, not ORM objects, and cleared with one UPDATE."""
    now = time.time() if now is None else now
    with _evaluate_lock:
        rules = ensure_default_rules(registry)
        if snap is None:
            from central.overview import alarm_candidates  # overview reads the alarms too

            with registry.session() as s:
                open_gateways = set(s.scalars(select(Alarm.gateway).where(Alarm.cleared_at.is_(None)).distinct()))
            snap = alarm_candidates(registry, ledger, rules, open_gateways)
        active = conditions(rules, snap, now)
        held = held_keys(rules, snap)
        outcome = Outcome()
        new: list[Alarm] = []
        with registry.session() as s:
            open_keys: set[Key] = set()
            rows = s.execute(select(Alarm.id, Alarm.rule_id, Alarm.gateway, Alarm.device)
                             .where(Alarm.cleared_at.is_(None)).order_by(Alarm.id))
            for alarm_id, rule_id, gateway, device in rows.all():
                key = (rule_id, gateway, device)
                if key in open_keys or (key not in active and not held(key)):
                    outcome.cleared.append(alarm_id)  # the condition ended (or a twin from a crashed writer)
                else:
                    open_keys.add(key)
            for part in range(0, len(outcome.cleared), 500):
                ids = outcome.cleared[part:part + 500]
                s.execute(update(Alarm).where(Alarm.id.in_(ids)).values(cleared_at=now)
                          .execution_options(synchronize_session=False))
            for alarm_id in outcome.cleared:
                notify_outbox.record(s, alarm_id, "cleared", now)
            for key, cond in active.items():
                if key not in open_keys:
                    alarm = Alarm(rule_id=cond.rule_id, gateway=cond.gateway, device=cond.device,
                                  message=cond.message, value=cond.value, raised_at=now)
                    s.add(alarm)
                    new.append(alarm)
            s.flush()
            outcome.raised = [a.id for a in new]
            for a in new:  # told by the notifier (central/notify), recorded with the alarm itself
                notify_outbox.record(s, a.id, "raised", now)
        for a in new:
            log.info("alarm %s raised: %s/%s %s", a.id, a.gateway, a.device or "-", str(a.message))
        return outcome


def acknowledge(registry: Registry, alarm_id: int, user: str,
                now: float | None = None) -> tuple[dict[str, Any], bool] | None:
    """Record who acknowledged an alarm and when; (alarm, changed), or None if there is no such alarm.

    Acknowledging twice keeps the first acknowledgement; a cleared alarm can still be acknowledged.
    """
    with registry.session() as s:
        alarm = s.get(Alarm, alarm_id)
        if alarm is None:
            return None
        changed = alarm.acked_at is None
        if changed:
            alarm.acked_by, alarm.acked_at = user, time.time() if now is None else now
            notify_outbox.record(s, alarm.id, "acknowledged", alarm.acked_at, user)
        s.flush()
        return _alarm_dict(alarm, gateway_places(registry, s)), changed


# ---------------------------------------------------------------- reading alarms


def gateway_places(registry: Registry, s: Any = None, ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Registry gateway -> school, building and room (names and ids); of the gateways of `ids` only if given."""
    def read(sess: Any) -> dict[str, dict[str, Any]]:
        query = (select(Gateway.id, Gateway.school_id, Room.id, Room.name, Building.id, Building.name)
                 .outerjoin(Room, Gateway.room_id == Room.id).outerjoin(Building, Room.building_id == Building.id))
        rows = sess.execute(query if ids is None else query.where(Gateway.id.in_(list(ids))))
        return {gid: {"school": school, "room_id": rid, "room": rname or "", "building_id": bid,
                      "building": bname or ""} for gid, school, rid, rname, bid, bname in rows}
    if s is not None:
        return read(s)
    with registry.session() as sess:
        return read(sess)


def _alarm_dict(a: Alarm, places: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    place = places.get(a.gateway, {})
    kind = a.rule.kind if a.rule else ""
    state = "cleared" if a.cleared_at is not None else ("acknowledged" if a.acked_at is not None else "active")
    return {"id": a.id, "rule_id": a.rule_id, "kind": kind,
            "label": LazyText(RULE_KINDS[kind].label) if kind in RULE_KINDS else kind,
            "gateway": a.gateway, "device": a.device, "school": place.get("school", ""),
            "building": place.get("building", ""), "room": place.get("room", ""),
            "message": translatable(a.message), "value": a.value, "raised_at": a.raised_at, "acked_by": a.acked_by,
            "acked_at": a.acked_at, "cleared_at": a.cleared_at, "state": state,
            "active": a.cleared_at is None, "acknowledged": a.acked_at is not None}


def list_alarms(registry: Registry, state: str = "open", limit: int = 200,
                gateway: str | None = None, gateways: Iterable[str] | None = None,
                ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """Alarms newest first: `open` (not cleared), `history` (cleared) or `all`; of one gateway, of the
    gateways of `gateways` (a page of the board) or the alarms of `ids` (a page of central/lists.py)."""
    q = select(Alarm).order_by(Alarm.raised_at.desc(), Alarm.id.desc()).limit(limit)
    if gateways is not None:
        q = q.where(Alarm.gateway.in_(list(gateways)))
    if ids is not None:
        q = q.where(Alarm.id.in_(list(ids)))
    if state == "open":
        q = q.where(Alarm.cleared_at.is_(None))
    elif state == "history":
        q = q.where(Alarm.cleared_at.is_not(None))
    elif state != "all":
        raise ValueError(f"state must be open, history or all, got {state!r}")
    if gateway:
        q = q.where(Alarm.gateway == gateway)
    with registry.session() as s:
        found = s.scalars(q.options(joinedload(Alarm.rule))).all()
        places = gateway_places(registry, s, ids={a.gateway for a in found})
        return [_alarm_dict(a, places) for a in found]


# ---------------------------------------------------------------- background


class AlarmMonitor(LeasedWorker):
    """Evaluates the rules every `interval` seconds in a daemon thread until stop().

    Several web instances on one database each run a monitor; the one holding the `alarms` lease
    evaluates (central/workers.py: renewed each round, taken over LEASE_ROUNDS rounds after its holder
    stopped renewing), so an alarm is raised, cleared and (issue 20) notified once, not once per instance:
    the `notifier` (central/notify/outbox.py) runs its round after each evaluation, in this thread.
    """

    LEASE = "alarms"
    LEASE_ROUNDS = 3

    def __init__(self, registry: Registry, ledger: Any, interval: float = 5.0,
                 notifier: notify_outbox.Notifier | None = None) -> None:
        super().__init__(registry.db, self.LEASE, interval=interval, ttl=self.LEASE_ROUNDS * interval,
                         name="alarm-monitor", what="alarm evaluation", join_s=interval + 30)
        self.registry, self.ledger, self.notifier = registry, ledger, notifier

    @property
    def runs(self) -> int:
        """Evaluations made (rounds under the lease)."""
        return self.rounds

    def round(self) -> None:
        evaluate(self.registry, self.ledger)
        if self.notifier is not None:
            self.notifier.round()
