"""The JSON API of CONTRACT.md. Every route but /api/health needs a login."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request

from campus import contract
from campus.errors import PayloadError
from dashboards.auth import login_required

bp = Blueprint("api", __name__, url_prefix="/api")


def _campus() -> dict[str, Any]:
    return current_app.extensions["campus"]


def _error(status: int, message: str) -> Any:
    return jsonify({"error": message}), status


def _float_arg(name: str, default: float) -> float:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise PayloadError(f"query parameter {name!r} must be a unix time, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise PayloadError(f"query parameter {name!r} must be finite")
    return value


@bp.errorhandler(PayloadError)
def _bad_request(exc: PayloadError) -> Any:
    return _error(400, str(exc))


@bp.get("/health")
def health() -> Any:
    return jsonify({"status": "ok"})


@bp.get("/gateways")
@login_required
def gateways() -> Any:
    return jsonify(_campus()["ledger"].gateways())


@bp.get("/devices")
@login_required
def devices() -> Any:
    latest = _campus()["ledger"].latest()
    out = []
    for dev in _campus()["ledger"].gateway_devices():
        out.append({**dev, "latest": latest.get((dev["gateway"], dev["id"]), {})})
    return jsonify(out)


@bp.get("/telemetry")
@login_required
def telemetry() -> Any:
    missing = [p for p in ("gateway", "device", "metric") if not request.args.get(p)]
    if missing:
        return _error(400, f"missing query parameter(s): {', '.join(missing)}")
    end = _float_arg("end", time.time())
    start = _float_arg("start", end - 3600)
    if start > end:
        return _error(400, "start is after end")
    points = _campus()["store"].query(request.args["gateway"], request.args["device"], request.args["metric"],
                                      start, end)
    return jsonify({"points": [[ts, v] for ts, v in points]})


@bp.get("/events")
@login_required
def events() -> Any:
    since = _float_arg("since", 0.0) if request.args.get("since") else None
    return jsonify(_campus()["ledger"].events(request.args.get("gateway") or None,
                                              request.args.get("type") or None, since))


@bp.post("/gateways/<gateway>/devices/<device>/commands")
@login_required
def send_command(gateway: str, device: str) -> Any:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object {action, params}")
    action, params = body.get("action"), body.get("params", {})
    if action not in contract.ACTIONS:
        return _error(400, f"action must be one of {', '.join(contract.ACTIONS)}")
    if not isinstance(params, dict):
        return _error(400, "params must be an object")
    ttl = body.get("ttl", 60)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 1 <= ttl <= 86400:
        return _error(400, "ttl must be 1 to 86400 seconds")
    dev = next((d for d in _campus()["ledger"].gateway_devices()
                if d["gateway"] == gateway and d["id"] == device), None)
    if dev is None:
        return _error(404, f"no device {device!r} on gateway {gateway!r}")
    service = _campus()["commands"]
    if service is None:
        return _error(503, "this server was started without --mqtt; it cannot send commands")
    record = service.send(dev["school"], gateway, device, action, params, by=g.user["user"], ttl=float(ttl))
    return jsonify(record), (200 if record["status"] != "pending" else 202)


@bp.get("/commands")
@login_required
def list_commands() -> Any:
    return jsonify(_campus()["ledger"].commands(request.args.get("gateway") or None))


@bp.get("/commands/<cid>")
@login_required
def get_command(cid: str) -> Any:
    record = _campus()["ledger"].command(cid)
    if record is None:
        return _error(404, f"no command {cid!r}")
    return jsonify(record)


@bp.get("/openapi.json")
def openapi() -> Any:
    from dashboards.openapi import document

    return jsonify(document())
