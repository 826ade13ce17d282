"""The room's rules run at the edge: central keeps the settings and sends them, the gateway decides.

Idle-off ("off after M minutes with people_count 0 and no command") is a room setting
(`rooms.idle_off_minutes`) with a school's default (`schools.idle_off_minutes`) for every room that sets none:
an admin sets a school's rooms at once and a teacher still tunes one room, or opts it out (0: never, whatever
the school's default: a lab's long experiment, an exam room with the projector on and nobody moving). The minutes in force are pushed to
the room's gateways in their config (`rules`, central/podium.py config_payload); the gateway watches its cameras and switches off by itself, offline too
(edge_agent/rules.py), and reports each run as a `rule_run` event.

The teacher's "keep on for this period" (保持开启至本节课结束) is a gateway-level command
(contract.RULES_DEVICE, action `override`, params `until`): `until` is the end of the school's current
period by its timetable (central/timetables.py), so the gateway needs no calendar. Outside a period (a
break, a holiday, a school without a timetable) the override holds OVERRIDE_OUTSIDE_S: a teacher who
asks on a holiday gets what they asked for, one period's worth.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select, update

from campus import contract
from campus.errors import ConfigError
from campus.i18n import lazy_gettext
from central import timetables
from central.registry import Gateway, Registry, Room, School

IDLE_OFF_RANGE = (1, 480)          # minutes: a whole school day at most
# A room's `idle_off_minutes` of 0: never, whatever the school's default (a lab's long experiment, an exam with
# the projector on and nobody moving). NULL stays "the school's default". The column says it as it is: 0 was never
# a valid setting (IDLE_OFF_RANGE starts at 1), so no row holds it and no migration is needed. A school's default
# has no "never" of its own: its NULL is "no default" already.
IDLE_OFF_NEVER = 0
OVERRIDE_OUTSIDE_S = 45 * 60.0     # an override asked for outside a period: one period's length
OVERRIDE_TTL_S = 60.0              # the override command's own deadline (like a panel command)


def check_idle_off(value: Any, *, never: bool = False) -> int | None:
    """Idle-off minutes as given (a form's text, JSON): a whole number in range, or None (empty: a room's
    school default, a school's none); with `never` (a room's setting), also IDLE_OFF_NEVER (0)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    low, high = IDLE_OFF_RANGE
    try:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ValueError
        minutes = int(value.strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        minutes = None
    if never and minutes == IDLE_OFF_NEVER:
        return IDLE_OFF_NEVER
    if minutes is None or not low <= minutes <= high:
        if never:
            raise ConfigError(lazy_gettext(
                "idle_off_minutes must be a whole number of minutes from %(low)d to %(high)d, 0 for never, or "
                "empty for the school's default", low=low, high=high))
        raise ConfigError(lazy_gettext("idle_off_minutes must be a whole number of minutes from %(low)d to "
                                       "%(high)d, or empty for never", low=low, high=high))
    return minutes


def _minutes(registry: Registry, room_id: int) -> tuple[int | None, int | None]:
    """(the room's own idle-off minutes, its school's default), in one statement."""
    with registry.session() as s:
        row = s.execute(select(Room.idle_off_minutes, School.idle_off_minutes)
                        .join(School, School.id == Room.school_id).where(Room.id == room_id)).first()
    return (row[0], row[1]) if row is not None else (None, None)


def room_rules(registry: Registry, room_id: int | None) -> dict[str, Any] | None:
    """What the room's gateways get as `rules` in their config (None: no rule, the gateway's own none): the
    room's minutes, else its school's default."""
    if room_id is None:
        return None
    own, school = _minutes(registry, room_id)
    minutes = own if own is not None else school
    # Never (IDLE_OFF_NEVER) goes as null like "no rule": the gateway drops its rule, the school's default too.
    return {"idle_off_minutes": minutes} if minutes else None


def settings(registry: Registry, room_id: int) -> dict[str, Any]:
    """The room's rule settings, as the API answers them: its own (0: never), its school's default, the one in
    force (null: the room is never switched off by itself)."""
    own, school = _minutes(registry, room_id)
    effective = own if own is not None else school
    return {"idle_off_minutes": own, "school_idle_off_minutes": school,
            "effective_idle_off_minutes": effective or None}


def set_idle_off(registry: Registry, room_id: int, value: Any) -> tuple[int | None, list[str]]:
    """Set the room's idle-off minutes (validated: ConfigError naming the field, nothing changed; None: the
    school's default; IDLE_OFF_NEVER: never, whatever the school's); the minutes and the room's gateways,
    whose config version went up (to push) if the setting changed."""
    return _set_minutes(registry, Room, room_id, check_idle_off(value, never=True), Gateway.room_id == room_id)


def school_settings(registry: Registry, school: str) -> dict[str, Any]:
    """The school's default idle-off, as the API answers it (LookupError: no such school)."""
    with registry.session() as s:
        row = s.get(School, school)
        if row is None:
            raise LookupError(school)
        return {"idle_off_minutes": row.idle_off_minutes}


def set_school_idle_off(registry: Registry, school: str, value: Any) -> tuple[int | None, list[str]]:
    """Set the school's default idle-off minutes (validated like a room's: ConfigError, nothing changed; None:
    no default); the minutes and the gateways whose rules changed with it (those of the school's rooms
    without their own setting), whose config version went up (to push)."""
    inheriting = select(Room.id).where(Room.school_id == school, Room.idle_off_minutes.is_(None))
    return _set_minutes(registry, School, school, check_idle_off(value), Gateway.room_id.in_(inheriting))


def _set_minutes(registry: Registry, holder: type[Room] | type[School], key: int | str, minutes: int | None,
                 following: ColumnElement[bool]) -> tuple[int | None, list[str]]:
    """The one way idle-off minutes are set, a room's or a school's default (`holder` `key`; LookupError if
    there is none): `minutes` as `check_idle_off` gave them, written with the config version of the gateways
    `following` it (those whose rules change with it) raised in the same transaction, so that no push sends a
    version without the minutes. The minutes, and those gateways (none when the value was already so)."""
    with registry.session() as s:
        row = s.get(holder, key)
        if row is None:
            raise LookupError(key)
        if row.idle_off_minutes == minutes:
            return minutes, []
        row.idle_off_minutes = minutes
        s.execute(update(Gateway).where(following).values(config_version=Gateway.config_version + 1))
        return minutes, sorted(s.scalars(select(Gateway.id).where(following)))


def override_until(registry: Registry, school: str, now: float | None = None) -> tuple[float, bool]:
    """Until when a teacher's override asked now holds: (unix time, whether it is the end of a period)."""
    now = time.time() if now is None else now
    tt = timetables.load(registry, school)
    found = timetables.period_at(tt, now) if tt is not None else None
    if found is None:
        return now + OVERRIDE_OUTSIDE_S, False
    day, period = found
    return datetime.combine(day, period.end, tt.zone).timestamp(), True  # type: ignore[union-attr]


def override_command(until: float) -> tuple[str, str, dict[str, Any]]:
    """(device, action, params) of the override command for a gateway (contract.RULES_DEVICE)."""
    return contract.RULES_DEVICE, contract.OVERRIDE_ACTION, {"until": round(until, 3)}
