"""The ledger as Prometheus metrics, for a district that watches central with its own monitoring.

`GET /api/metrics` (admin, facility; a bearer token, as vmagent and
Prometheus send with `bearer_token`) answers the text exposition format
0.0.4 (an account limited to some schools: their gateways and devices, no
ingest worker): per gateway whether it is online, when it was last heard from and
its delivery counters; per device whether it is `ok`; per ingest worker
whether it still reports and its counters. Alerting on these (a worker not
running, gaps growing, a school's gateways offline) is the monitoring
system's job, not ours.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from central.ledger import Ledger

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_GATEWAY = (("campus_gateway_online", "gauge", "1 if the gateway is online", "online"),
            ("campus_gateway_last_seen_seconds", "gauge", "unix time the gateway was last heard from", "last_seen"),
            ("campus_gateway_received_total", "counter", "messages stored (new seq numbers)", "received"),
            ("campus_gateway_gaps", "gauge", "seq numbers never received", "gaps"),
            ("campus_gateway_duplicates_total", "counter", "redeliveries dropped", "duplicates"),
            ("campus_gateway_waiting", "gauge", "messages the gateway holds until central acknowledges them", "waiting"),
            ("campus_gateway_waiting_age_seconds", "gauge", "age of the oldest message waiting for central",
             "waiting_age"))
_WORKER = (("campus_ingest_running", "gauge", "1 if the worker reported within three intervals", "running"),
           ("campus_ingest_messages_total", "counter", "messages taken from the broker", "messages"),
           ("campus_ingest_stored_total", "counter", "new messages recorded", "stored"),
           ("campus_ingest_duplicates_total", "counter", "redeliveries dropped", "duplicates"),
           ("campus_ingest_rejected_total", "counter", "payloads that break the contract", "rejected"),
           ("campus_ingest_refused_by_store_total", "counter", "samples the store refused for their content",
            "refused_by_store"),
           ("campus_ingest_store_errors_total", "counter", "failed store writes (retried)", "store_errors"),
           ("campus_ingest_acks_total", "counter", "acknowledgements published to gateways", "acks"))


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, Any], float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{text}}} {float(value)!r}")
    return lines


def exposition(ledger: Ledger, ids: Collection[str] | None = None) -> str:
    """Every metric family, in the text format (a family without samples keeps its HELP and TYPE).

    `ids`: only these gateways and their devices, and no ingest worker (a school-scoped account sees its
    schools' gateways; the workers serve the whole district)."""
    gateways = ledger.gateways(ids=ids)
    workers = ledger.workers() if ids is None else []
    lines: list[str] = []
    for name, kind, help_text, key in _GATEWAY:
        lines += _family(name, kind, help_text, (
            ({"school": gw["school"], "gateway": gw["id"], "room": gw["room"]}, gw[key])
            for gw in gateways if gw[key] is not None))
    lines += _family("campus_device_ok", "gauge", "1 if the device reports status ok", (
        ({"gateway": d["gateway"], "device": d["id"], "kind": d["kind"], "status": d["status"]},
         d["status"] == "ok") for d in ledger.gateway_devices(ids=ids)))
    for name, kind, help_text, key in _WORKER:
        lines += _family(name, kind, help_text, (
            ({"worker": w["name"], "host": w["host"]}, w.get(key, 0)) for w in workers))
    return "\n".join(lines) + "\n"
