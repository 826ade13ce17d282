"""The OpenAPI 3.1 document for /api/openapi.json, written out by hand.

Kept next to the routes it describes; a test checks every route is in it.
"""

from __future__ import annotations

from typing import Any

import campus
from campus import contract


def _get(summary: str, params: list[tuple[str, str, bool]] = (), schema: dict[str, Any] | None = None,
         auth: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [{"name": n, "in": where, "required": req, "schema": {"type": "number" if n in
                        ("start", "end", "since") else "string"}} for n, where, req in params],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema or {}}}}},
    }
    if auth:
        op["responses"].update({"401": {"description": "login required"}, "403": {"description": "forbidden"}})
        op["security"] = [{"bearer": []}]
    else:
        op["security"] = []
    if any(p[1] == "query" for p in params):
        op["responses"]["400"] = {"description": "bad query parameter"}
    return op


def document() -> dict[str, Any]:
    obj = {"type": "object"}
    arr = {"type": "array", "items": obj}
    send = _get("Send a command to a device and wait a few seconds for its result",
                [("gateway", "path", True), ("device", "path", True)], obj)
    send["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["action"],
        "properties": {"action": {"type": "string", "enum": list(contract.ACTIONS)},
                       "params": {"type": "object"}, "ttl": {"type": "number", "minimum": 1, "maximum": 86400}}}}}}
    send["responses"].update({"202": {"description": "sent; no result yet"},
                              "400": {"description": "bad body"}, "404": {"description": "no such device"},
                              "503": {"description": "no MQTT connection configured"}})
    stream = _get("Live state of one room for the classroom panel: server-sent events (`event: room`, the room as "
                  "JSON, on every change; a `: keepalive` comment every 15 s)", [("gateway", "path", True)])
    stream["responses"]["200"] = {"description": "an open text/event-stream",
                                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    metrics = _get("Gateways, devices and ingest workers in the Prometheus text format 0.0.4, for scraping "
                   "with a bearer token (facility, admin)")
    metrics["responses"]["200"] = {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
    ack = _get("Acknowledge an alarm: records who and when (facility, admin)", [("aid", "path", True)], obj)
    ack["responses"]["404"] = {"description": "no such alarm"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "campus-iot", "version": campus.__version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/api/health": {"get": _get("Liveness", schema={"type": "object", "properties": {
                "status": {"type": "string"}}}, auth=False)},
            "/api/gateways": {"get": _get("Gateways with presence and delivery counters; `waiting` messages the gateway "
                                          "holds until central acknowledges them, `waiting_age` the oldest's age (s), "
                                          "`acked_seq` central's acknowledged watermark", schema=arr)},
            "/api/devices": {"get": _get("Devices with status and latest values", schema=arr)},
            "/api/telemetry": {"get": _get("Points of one series", [("gateway", "query", True),
                                                                    ("device", "query", True),
                                                                    ("metric", "query", True),
                                                                    ("start", "query", False),
                                                                    ("end", "query", False)], obj)},
            "/api/events": {"get": _get("Events, newest first", [("gateway", "query", False), ("type", "query", False),
                                                                 ("since", "query", False)], arr)},
            "/api/gateways/{gateway}/devices/{device}/commands": {"post": send},
            "/api/commands": {"get": _get("Command audit trail, newest first", [("gateway", "query", False)], arr)},
            "/api/commands/{cid}": {"get": _get("One command", [("cid", "path", True)], obj)},
            "/api/panel/{gateway}/stream": {"get": stream},
            "/api/alarms": {"get": _get("Alarms, newest first: open (not cleared), history (cleared) or all "
                                        "(facility, admin)", [("state", "query", False), ("limit", "query", False),
                                                              ("gateway", "query", False)], arr)},
            "/api/alarms/{aid}/ack": {"post": ack},
            "/api/board": {"get": _get("Every room: gateway online and last seen, devices with status, problems, "
                                       "open alarms (facility, admin)", [("school", "query", False),
                                                                         ("building", "query", False),
                                                                         ("problem", "query", False)], obj)},
            "/api/ingest": {"get": _get("Ingest workers: counters since each started (messages, stored, duplicates, "
                                        "rejected, refused_by_store, store_errors, last_error), running (facility, "
                                        "admin)", schema=arr)},
            "/api/metrics": {"get": metrics},
            "/api/audit": {"get": _get("Audit trail: logins, refusals, commands (admin)", schema=arr)},
            "/api/openapi.json": {"get": _get("This document", auth=False)},
        },
    }
