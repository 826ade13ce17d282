"""The JSON API of CONTRACT.md. Every route but /api/health needs a login.

Teachers see only the gateways of their rooms and may command only those;
facility managers see everything and command nothing; admins do anything.
An admin or facility account limited to some schools sees and commands only
theirs (dashboards/auth.py: every list is filtered in its SQL by `sight`).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from campus import contract
from campus.errors import ActionRejected, CampusError, PayloadError, StoreError
from campus.i18n import LazyText, lazy_gettext, message_of
from central import edge_rules, lists, overview
from central.store.base import MAX_POINTS
from central.timetables import today_in
from dashboards.auth import (
    audit,
    login_required,
    may_command,
    may_see,
    not_found,
    refuse_gateway,
    school_scoped,
    sight,
)
from dashboards.context import central, web
from dashboards.i18n import shown_command, site_zone
from dashboards.strict_json import json_object
from device_profiles import check_action, shipped_profile

bp = Blueprint("api", __name__, url_prefix="/api")


def error(status: int, message: str | LazyText, field: str | None = None) -> Any:
    """A JSON refusal; `field` names the part of the request that is wrong, when there is one. A LazyText
    `message` is sent in the request's language (the app's JSON provider, dashboards/i18n.py)."""
    return jsonify({"error": message, **({"field": field} if field else {})}), status


def float_arg(name: str, default: float) -> float:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise PayloadError(lazy_gettext("query parameter %(name)s must be a unix time, got %(value)s",
                                        name=repr(name), value=repr(raw[:40]))) from None
    if not math.isfinite(value):
        raise PayloadError(lazy_gettext("query parameter %(name)s must be finite", name=repr(name)))
    return value


@bp.errorhandler(CampusError)
def _bad_request(exc: CampusError) -> Any:
    # A store that cannot answer is the server's trouble, not the caller's: 503, and a retry may work.
    return error(503 if isinstance(exc, StoreError) else 400, message_of(exc))


@bp.get("/health")
def health() -> Any:
    return jsonify({"status": "ok"})


def in_sight() -> lists.Scope:
    """What the caller may see, for a list's SQL (dashboards/auth.py `sight`)."""
    return sight(g.user)


def paging(default_limit: int = lists.DEFAULT_LIMIT) -> lists.Paging:
    """`limit`, `offset` and `q` of the request (central/lists.py): defaults when absent, a 400 naming the
    parameter when wrong."""
    return lists.Paging.parse(request.args, default_limit=default_limit)


def paged(rows: list[Any], total: int) -> Response:
    """A list answer: the page's rows as before (clients keep working), the total of all pages in
    `X-Total-Count`."""
    resp = jsonify(rows)
    resp.headers["X-Total-Count"] = str(total)
    return resp


@bp.get("/gateways")
@login_required
def gateways() -> Any:
    c = central()
    page = overview.api_gateways(c.registry, c.ledger, paging(), in_sight())
    return paged(page.items, page.total)


@bp.get("/devices")
@login_required
def devices() -> Any:
    """`gateway`: only the devices of these gateways (comma-separated; a page of /api/gateways)."""
    sight = in_sight()
    raw = request.args.get("gateway")
    if raw:
        wanted = tuple(contract.check_segment(gw[:100], "query parameter 'gateway'")
                       for gw in raw.split(",")[:lists.MAX_LIMIT] if gw)
        sight = replace(sight, gateways=wanted if sight.gateways is None
                        else tuple(gw for gw in wanted if gw in sight.gateways))
    page = overview.api_devices(central().ledger, paging(), sight)
    return paged(page.items, page.total)


@bp.get("/schools")
@login_required(roles=("admin", "facility"))
def schools() -> Any:
    """The district: one row per school (rooms, gateways online / total, open alarms, faults, lamps and
    filters due), sorted by `sort` (`-` before it: descending), `problems=1` only schools with one."""
    sort = request.args.get("sort") or "school"
    c = central()
    page = overview.school_rollup(c.registry, paging(), sort.removeprefix("-")[:40], sort.startswith("-"),
                                  flag_arg("problems"), in_sight(), c.board_snapshots, today_in(site_zone()))
    return paged([r.as_dict() for r in page.items], page.total)


def id_arg(name: str) -> str | None:
    """An id in the query (a gateway, an event type), None if absent; PayloadError (400) if no id can be it:
    it is compared in SQL, and PostgreSQL refuses a NUL in a query's text outright."""
    raw = request.args.get(name) or None
    return contract.check_segment(raw[:100], f"query parameter {name!r}") if raw is not None else None


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise PayloadError(lazy_gettext("query parameter %(name)s must be a whole number from %(low)s to %(high)s, "
                                        "got %(value)s", name=repr(name), low=low, high=high, value=repr(raw[:40])))
    return int(raw)


def flag_arg(name: str) -> bool:
    raw = request.args.get(name, "").lower()
    if raw not in ("", "0", "1", "true", "false"):
        raise PayloadError(lazy_gettext("query parameter %(name)s must be 1 or 0, got %(value)s", name=repr(name),
                                        value=repr(raw[:40])))
    return raw in ("1", "true")


@bp.get("/telemetry")
@login_required
def telemetry() -> Any:
    """One series in [start, end] (default: the last hour), never silently without its newest points.

    At most `limit` points (default and most: 10,000). By default a window holding more is downsampled
    (`downsampled`, `step`: the newest sample of each step), and its newest point is the last. With
    `raw=1` the answer is raw points, the newest `limit` of the window; `truncated` says older ones were
    left out, and `next` is the `cursor` that asks for the page before (same start, end and limit).
    """
    missing = [p for p in ("gateway", "device", "metric") if not request.args.get(p)]
    if missing:
        return error(400, lazy_gettext("missing query parameter(s): %(names)s", names=", ".join(missing)))
    gateway = request.args["gateway"]
    for name in ("gateway", "device", "metric"):
        contract.check_segment(request.args[name], name)
    if not may_see(g.user, gateway):
        return refuse_gateway(g.user, lazy_gettext("gateway %(gateway)s is not in your rooms", gateway=repr(gateway)))
    device, metric = request.args["device"], request.args["metric"]
    end = float_arg("end", time.time())
    start = float_arg("start", end - 3600)
    if start > end:
        return error(400, lazy_gettext("start is after end"))
    limit = int_arg("limit", MAX_POINTS, 1, MAX_POINTS)
    raw = flag_arg("raw")
    cursor = float_arg("cursor", 0.0) if request.args.get("cursor") else None
    if cursor is not None and not raw:
        return error(400, lazy_gettext("cursor pages raw points: it goes with raw=1"))
    store = central().store
    answer: dict[str, Any] = {"start": start, "end": end, "limit": limit, "downsampled": False, "step": 0,
                              "truncated": False, "next": None}
    if not raw:
        window = store.window(gateway, device, metric, start, end, limit)
        points = window.points
        answer.update(downsampled=window.downsampled, step=window.step)
    else:
        # Points strictly before the cursor (the oldest point of the page before); one more than asked
        # for tells whether older ones were left out.
        points = store.query(gateway, device, metric, start, end if cursor is None else min(end, cursor), limit + 2)
        if cursor is not None:
            points = [p for p in points if p[0] < cursor]
        if len(points) > limit:
            points = points[-limit:]
            answer.update(truncated=True, next=repr(points[0][0]))
    return jsonify({"points": [[ts, v] for ts, v in points], **answer})


@bp.get("/events")
@login_required
def events() -> Any:
    since = float_arg("since", 0.0) if request.args.get("since") else None
    gateway = id_arg("gateway")
    if gateway and not may_see(g.user, gateway):
        return refuse_gateway(g.user, lazy_gettext("gateway %(gateway)s is not in your rooms", gateway=repr(gateway)))
    page = lists.events(central().ledger.db, paging(1000), gateway, id_arg("type"), since, in_sight())
    return paged(page.items, page.total)


@bp.post("/gateways/<gateway>/devices/<device>/commands")
@login_required
def send_command(gateway: str, device: str) -> Any:
    if not may_command(g.user, gateway):
        if school_scoped(g.user) and not may_see(g.user, gateway):
            return not_found("gateway")
        audit("command", f"refused {gateway}/{device}", ok=False)
        return error(403, lazy_gettext("you may not command gateway %(gateway)s", gateway=repr(gateway)))
    body = json_object()
    unknown = sorted(set(body) - {"action", "params", "ttl"})
    if unknown:
        return error(400, lazy_gettext("unknown field %(field)s (a command has action, params and ttl)",
                                       field=repr(unknown[0][:40])), field=unknown[0][:40])
    action, params = body.get("action"), body.get("params", {})
    if action not in contract.ACTIONS:
        return error(400, lazy_gettext("action must be one of %(actions)s", actions=", ".join(contract.ACTIONS)),
                     field="action")
    ttl = body.get("ttl", 60)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 1 <= ttl <= 86400:
        return error(400, lazy_gettext("ttl must be 1 to 86400 seconds"), field="ttl")
    dev = next((d for d in central().ledger.gateway_devices(gateway) if d["id"] == device), None)
    if dev is None:
        return error(404, lazy_gettext("no device %(device)s on gateway %(gateway)s", device=repr(device),
                                       gateway=repr(gateway)))
    try:
        # With the device's profile if central ships it; the agent checks again with its own.
        check_action(action, params, shipped_profile(dev["profile"]))
    except ActionRejected as exc:
        audit("command", f"refused {gateway}/{device} {action}: {exc}", ok=False)
        return error(400, message_of(exc), field=exc.field)
    if not web().command_limiter.allow(g.user["user"]):
        audit("command", f"rate limited {gateway}/{device} {action}", ok=False)
        return error(429, lazy_gettext("too many commands; wait a minute"))
    service = central().commands
    if service is None:
        return error(503, lazy_gettext("this server was started without --mqtt; it cannot send commands"))
    record = service.send(dev["school"], gateway, device, action, params, by=g.user["user"], ttl=float(ttl))
    audit("command", f"{gateway}/{device} {action} {params} -> {record['status']} ({record['id']})")
    return jsonify(shown_command(record)), (200 if record["status"] != "pending" else 202)


@bp.post("/gateways/<gateway>/override")
@login_required
def send_override(gateway: str) -> Any:
    """The teacher's "keep on for this period": a gateway-level command (central/edge_rules.py) whose `until` is
    the end of the school's current period; idle-off and power-off schedules leave the room alone until then."""
    if not may_command(g.user, gateway):
        if school_scoped(g.user) and not may_see(g.user, gateway):
            return not_found("gateway")
        audit("override", f"refused {gateway}", ok=False)
        return error(403, lazy_gettext("you may not command gateway %(gateway)s", gateway=repr(gateway)))
    body = json_object() if request.get_data() else {}
    if body:
        field = sorted(body)[0][:40]
        return error(400, lazy_gettext("unknown field %(field)s (an override takes none)", field=repr(field)),
                     field=field)
    info = central().registry.gateway_info(gateway)
    if info is None:
        return not_found("gateway")
    if not web().command_limiter.allow(g.user["user"]):
        audit("override", f"rate limited {gateway}", ok=False)
        return error(429, lazy_gettext("too many commands; wait a minute"))
    service = central().commands
    if service is None:
        return error(503, lazy_gettext("this server was started without --mqtt; it cannot send commands"))
    until, period_end = edge_rules.override_until(central().registry, info["school"])
    device, action, params = edge_rules.override_command(until)
    record = service.send(info["school"], gateway, device, action, params, by=g.user["user"],
                          ttl=edge_rules.OVERRIDE_TTL_S)
    audit("override", f"{gateway} until {until:.0f}{' (period end)' if period_end else ''} -> {record['status']} "
                      f"({record['id']})")
    return jsonify({**record, "until": params["until"], "period_end": period_end}), (200 if record["status"] != "pending" else 202)


@bp.get("/commands")
@login_required
def list_commands() -> Any:
    page = overview.api_commands(central().ledger, paging(200), id_arg("gateway"), in_sight())
    return paged([shown_command(c) for c in page.items], page.total)


@bp.get("/commands/<cid>")
@login_required
def get_command(cid: str) -> Any:
    record = central().ledger.command(cid)
    if record is None or not may_see(g.user, record["gateway"]):
        return not_found("command") if school_scoped(g.user) else error(404, lazy_gettext("no command %(id)s", id=repr(cid)))
    return jsonify(shown_command(record))


@bp.get("/ingest")
@login_required(roles=("admin", "facility"), district=True)
def ingest_workers() -> Any:
    """Every ingest worker's counters (messages, stored, duplicates, rejected, refused by the store, store
    errors and the last one) and whether it still reports."""
    return jsonify(central().ledger.workers())


@bp.get("/metrics")
@login_required(roles=("admin", "facility"))
def metrics() -> Any:
    """The ledger for a monitoring system to scrape; a school-scoped account's schools only (a school's own
    monitoring), without the district's ingest workers."""
    from dashboards.prometheus import CONTENT_TYPE, exposition

    scope = in_sight()
    ids = None if scope.schools is None else lists.all_gateway_ids(central().registry.db, scope)
    return Response(exposition(central().ledger, ids), content_type=CONTENT_TYPE)


@bp.get("/audit")
@login_required(roles=("admin",), district=True)
def audit_trail() -> Any:
    page = lists.audit(central().registry.db, paging(200))
    return paged(page.items, page.total)


@bp.get("/openapi.json")
def openapi() -> Any:
    from dashboards.i18n import translate
    from dashboards.openapi import document, localized

    return jsonify(localized(document(), translate))


@bp.post("/demo/simulators/<gateway>/<device>")
@login_required(roles=("admin",))
def demo_simulator(gateway: str, device: str) -> Any:
    """Demo only: pin simulator values (e.g. push CO2 over a limit) to show alarms."""
    if not may_see(g.user, gateway):
        return refuse_gateway(g.user, lazy_gettext("gateway %(gateway)s is not in your rooms", gateway=repr(gateway)))
    control = web().config.sim_control
    if control is None:
        return error(404, lazy_gettext("no simulators in this server (only `campus demo` has them)"))
    overrides = json_object().get("overrides")
    if not isinstance(overrides, dict) or not all(
            isinstance(k, str) and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))
            for k, v in overrides.items()):
        return error(400, lazy_gettext('body must be {"overrides": {metric: number or null}}'))
    try:
        control(gateway, device, overrides)
    except KeyError as exc:
        return error(404, lazy_gettext("no simulator %(name)s", name=str(exc)))
    audit("demo_simulator", f"{gateway}/{device} {overrides}")
    return jsonify({"ok": True, "overrides": overrides})
