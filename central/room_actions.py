"""Why a room did something by itself, for the teacher's panel: "22:05 投影机已按计划「放学关机」关闭".

A room switches itself: a schedule runs (at the edge, reported as a `schedule_run` event; or sent by
central's own scheduler as commands `by` "schedule:NAME"), a card at the podium starts or ends a class (a
`podium` event; a class nobody ended ends at its timeout), an edge rule acts (a `rule_run` event: data
`rule`, e.g. "idle_off", `at` or `planned`, `steps`, `reason` in words, marked: `reason_marked`;
campus/contract.py). A
teacher who finds the projector off wants to know which. `recent` reads each room's newest such events
in one statement for any number of rooms (central/lists.py `room_events`), and `actions` turns them,
with the room's recent commands read already, into the panel's items, newest first: plain data (a time,
a source, the schedule's name or the rule, the action, the devices, how it went), put into words in the
reader's language by the panel (dashboards/panel.py `why_text`, static/panel.js).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from campus import contract
from central import lists
from central.db import Database

TYPES = (contract.SCHEDULE_RUN_EVENT, contract.PODIUM_EVENT, contract.RULE_RUN_EVENT)
SHOWN = 5                 # the last few: the panel is a lectern screen, not a log
CENTRAL_BY = "schedule:"  # `by` of the commands central's scheduler sends (central/schedules.py run)
SAME_RUN_S = 120.0        # commands of one central run are sent within seconds of each other


def recent(db: Database, gateways: Iterable[str], since: float, per_room: int = SHOWN
           ) -> dict[str, list[dict[str, Any]]]:
    """Each gateway's newest automatic-action events since `since` (a podium's refused swipes, which do
    nothing, are read too and dropped by `actions`: twice the room's share is read)."""
    return lists.room_events(db, list(gateways), TYPES, per_room * 2, since)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _steps(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in data.get("steps") or [] if isinstance(s, dict)]


def _status(statuses: list[str]) -> str:
    """One status for a run's steps: done if all were, waiting while any is, else the first that was not."""
    if all(s == "done" for s in statuses):
        return "done"
    if "pending" in statuses:
        return "pending"
    return next(s for s in statuses if s != "done")


def _item(ts: float, source: str, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    actions = sorted({str(s.get("action") or "") for s in steps} - {""})
    devices = sorted({str(s.get("device") or "") for s in steps} - {""})
    statuses = [str(s.get("status") or "done") for s in steps]
    item = {"ts": ts, "source": source, "name": "", "rule": "", "reason": "", "outcome": "",
            "action": actions[0] if len(actions) == 1 else "", "devices": devices,
            "status": _status(statuses) if statuses else "done"}
    item.update({k: (str(v)[:100] if isinstance(v, str) else v) for k, v in extra.items()})
    return item


def actions(events: list[dict[str, Any]], commands: list[dict[str, Any]], limit: int = SHOWN
            ) -> list[dict[str, Any]]:
    """The panel's items of one room, newest first: its automatic-action `events` (`recent`) and the
    commands of its `commands` that central's scheduler sent (grouped into one item per run)."""
    items = []
    for ev in events:
        data, ts = ev.get("data") or {}, float(ev["ts"])
        if ev["type"] == contract.SCHEDULE_RUN_EVENT:
            # A run not run (contract.SCHEDULE_SKIPPED: a teacher's override held) keeps its reason, so the
            # panel says why the room stayed on rather than what the schedule would have done.
            items.append(_item(_number(data.get("planned")) or ts, "schedule", _steps(data),
                               name=data.get("name") or "", outcome=data.get("outcome") or "ran",
                               reason=data.get("reason") or ""))
        elif ev["type"] == contract.PODIUM_EVENT and data.get("outcome") in ("started", "ended"):
            items.append(_item(ts, "podium", _steps(data), outcome=data["outcome"],
                               reason=data.get("reason") or ("swipe" if data.get("card") else "timeout")))
        elif ev["type"] == contract.RULE_RUN_EVENT:
            # The reason as the gateway marked it (contract.EVENT_TEXTS), for the panel to say in its language.
            marked = {k: data[k] for k in ("reason_msgid", "reason_params") if k in data}
            items.append(_item(_number(data.get("at")) or _number(data.get("planned")) or ts, "rule", _steps(data),
                               rule=data.get("rule") or "", reason=data.get("reason") or "",
                               outcome=data.get("outcome") or "ran", **({"reason_marked": marked} if marked else {})))
    runs: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for c in sorted(commands, key=lambda c: c["created"]):
        by = str(c.get("by") or "")
        if not by.startswith(CENTRAL_BY):
            continue
        key = next(((b, start) for b, start in runs if b == by and c["created"] - start <= SAME_RUN_S),
                   (by, c["created"]))
        runs.setdefault(key, []).append(c)
    for (by, start), cmds in runs.items():
        items.append(_item(float(start), "schedule", cmds, name=by[len(CENTRAL_BY):], outcome="ran"))
    items.sort(key=lambda i: i["ts"], reverse=True)
    return items[:limit]
