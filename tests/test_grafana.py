"""The Grafana dashboards in dashboards/grafana: valid JSON, only metric names the project writes,
template variables that exist, and (slow) every query accepted by a real VictoriaMetrics.

Series names in VictoriaMetrics are `<measurement>_<field>` = `<device kind>_<metric>` (see
central/store/influx.py), with the labels school, gateway, room and device.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from campus import contract
from device_profiles import available_profiles, load_profile
from tests.servers import VictoriaMetrics, wait_until

DASH_DIR = Path(__file__).resolve().parent.parent / "dashboards" / "grafana"
DASHBOARDS = sorted(DASH_DIR.glob("*.json"))

# CONTRACT.md, "Device kinds, metric and action names".
CONTRACT_METRICS = (
    "temperature_c", "humidity_pct", "co2_ppm", "pm25_ugm3", "illuminance_lux", "noise_dba", "people_count",
    "power", "input", "lamp_hours", "filter_hours", "error_fan", "error_lamp", "error_temperature",
    "error_cover", "error_filter", "error_other", "volume", "muted",
)
PROFILE_SERIES = {f"{p.kind}_{m}" for p in map(load_profile, available_profiles()) for m in p.metrics}
ALLOWED_SERIES = {f"{kind}_{m}" for kind in contract.DEVICE_KINDS for m in CONTRACT_METRICS} | PROFILE_SERIES

# Grafana's own variables ($__interval, $__range, $__all, ...) start with two underscores.
_VAR_REF = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "keep_metric_names"}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])  # the children of a collapsed row


def _targets(dash: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in _panels(dash):
        for target in panel.get("targets", []):
            yield panel, target


def _variable_queries(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            yield var["name"], query


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _substitute(expr: str, dash: dict[str, Any], interval: str = "1m", range_s: int = 3600) -> str:
    """Replace template variables the way Grafana does with every variable on 'All'."""
    values = {v["name"]: v.get("allValue") or ".*" for v in dash["templating"]["list"]}
    values.update({"__interval": interval, "__rate_interval": interval, "__range": f"{range_s}s",
                   "__range_s": str(range_s), "__range_ms": str(range_s * 1000)})

    def one(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        return values.get(name, m.group(0))

    return _VAR_REF.sub(one, expr)


def series_names(expr: str) -> tuple[set[str], set[str]]:
    """The metric names an expression selects: (literal names, `__name__=~` regexes)."""
    names: set[str] = set()
    regexes: set[str] = set()
    for op, value in re.findall(r'__name__\s*(=~|=)\s*"([^"]*)"', expr):
        (regexes if op == "=~" else names).add(value)
    bare = re.sub(r"\{[^{}]*\}", "{}", expr)  # label matchers
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', bare)  # string arguments (label_replace)
    bare = re.sub(r"\[[^\]]*\]", "[]", bare)  # ranges and subquery steps
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)  # label lists
    for m in re.finditer(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", bare):
        word, call = m.group(1), m.group(2)
        if call or word in _KEYWORDS:
            continue
        names.add(word)
    return names, regexes


def check_names(where: str, expr: str, allowed: set[str]) -> None:
    names, regexes = series_names(expr)
    assert names or regexes, f"{where}: no metric name found in {expr!r}"
    unknown = names - allowed
    assert not unknown, f"{where}: unknown metric names {sorted(unknown)} in {expr!r}"
    for rx in regexes:
        if re.fullmatch(r"[\w|]+", rx):  # a plain alternation: every name must exist
            missing = set(rx.split("|")) - allowed
            assert not missing, f"{where}: unknown metric names {sorted(missing)} in {expr!r}"
        assert any(re.fullmatch(rx, n) for n in allowed), f"{where}: {rx!r} matches no metric name"


# ---------------------------------------------------------------------------- static checks


def test_dashboards_exist_and_parse() -> None:
    assert {p.name for p in DASHBOARDS} >= {"campus-environment.json", "campus-equipment.json"}
    uids = set()
    for path in DASHBOARDS:
        dash = _load(path)
        assert dash["schemaVersion"] >= 36, path.name
        assert dash["uid"] not in uids, f"{path.name}: uid {dash['uid']} used twice"
        uids.add(dash["uid"])
        ids = [p["id"] for p in _panels(dash)]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        assert any(True for _ in _targets(dash)), f"{path.name}: no queries"


def test_name_parser() -> None:
    names, regexes = series_names(
        'sum by (school, room) (sum_over_time((projector_power{room=~"$room"} == 1)[7d:5m] offset -1w)) / 12'
        ' or label_replace(display_power > 0, "flag", "x", "", "") or {__name__=~"a|b", x="y"}')
    assert names == {"projector_power", "display_power"}
    assert regexes == {"a|b"}
    assert series_names("time() - max(tlast_over_time(environment_co2_ppm[1d]))")[0] == {"environment_co2_ppm"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_use_known_metric_names(path: Path) -> None:
    dash = _load(path)
    for panel, target in _targets(dash):
        check_names(f"{path.name} panel {panel['title']!r} {target['refId']}", target["expr"], ALLOWED_SERIES)
    for name, query in _variable_queries(dash):
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
        assert m, f"{path.name}: variable {name}: {query!r} is not label_values(selector, label)"
        check_names(f"{path.name} variable {name}", m.group(1), ALLOWED_SERIES)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_use_metrics_a_profile_produces(path: Path) -> None:
    """Stricter than the contract cross product: a series no shipped profile writes would stay empty."""
    dash = _load(path)
    for panel, target in _targets(dash):
        check_names(f"{path.name} panel {panel['title']!r}", target["expr"], PROFILE_SERIES)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_template_variables_are_defined(path: Path) -> None:
    dash = _load(path)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("school", "room"):
        var = variables[name]
        assert var["type"] == "query" and var["includeAll"] and var["multi"], name
        assert var["datasource"]["uid"] == "${datasource}", name
    used = {next(g for g in m.groups() if g) for s in _strings(dash) for m in _VAR_REF.finditer(s)}
    undefined = {u for u in used if not u.startswith("__")} - set(variables)
    assert not undefined, f"{path.name}: undefined variables {sorted(undefined)}"
    for panel in _panels(dash):
        if "repeat" in panel:
            assert panel["repeat"] in variables, f"{path.name}: repeat on undefined {panel['repeat']}"
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", f"{path.name}: {panel['title']}"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", f"{path.name}: {panel['title']}"


def test_equipment_mappings_follow_the_contract_enums() -> None:
    dash = _load(DASH_DIR / "campus-equipment.json")
    seen = set()
    for panel in _panels(dash):
        for mapping in panel.get("fieldConfig", {}).get("defaults", {}).get("mappings", []):
            texts = {int(k): v["text"] for k, v in mapping["options"].items()}
            exprs = " ".join(t["expr"] for t in panel["targets"])
            if "projector_power" in exprs:
                assert texts == dict(enumerate(contract.METRIC_ENUMS["power"]))
                seen.add("power")
            if "projector_error_" in exprs:
                assert texts == dict(enumerate(contract.METRIC_ENUMS["error_*"]))
                seen.add("error")
    assert seen == {"power", "error"}


def test_lamp_hours_threshold_is_the_profile_limit() -> None:
    limit = load_profile("projector-pjlink").health["lamp_hours"]["max"]
    dash = _load(DASH_DIR / "campus-equipment.json")
    panel = next(p for p in _panels(dash) if p["title"] == "Lamp hours")
    steps = [prop["value"]["steps"] for o in panel["fieldConfig"]["overrides"] for prop in o["properties"]
             if prop["id"] == "thresholds"][0]
    assert steps[-1] == {"color": "red", "value": limit}


# ---------------------------------------------------------------------------- against VictoriaMetrics


def _duration_s(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    m = re.fullmatch(r"(?:now-)?(\d+)([smhdw])", text)
    assert m, text
    return int(m.group(1)) * units[m.group(2)]


def _get(base: str, path: str, params: list[tuple[str, str]]) -> dict[str, Any]:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return {"status": "error", "http": exc.code, "error": exc.read().decode(errors="replace")}


def _write_sample_school(url: str) -> float:
    """Ten minutes of every kind of device in one room, through the production store."""
    from central.store import Sample, open_store

    store = open_store(url)
    now = time.time()
    devices = {
        "env": ("environment", {"temperature_c": 23.5, "humidity_pct": 48.0, "co2_ppm": 1200.0, "pm25_ugm3": 30.0,
                                "illuminance_lux": 450.0, "noise_dba": 52.0}),
        "cam": ("camera", {"people_count": 31.0}),
        "proj": ("projector", {"power": "on", "input": "hdmi1", "muted": "off", "lamp_hours": 2950.0,
                               "filter_hours": 800.0, "error_fan": "warning", "error_lamp": "ok",
                               "error_temperature": "ok", "error_cover": "ok", "error_filter": "ok",
                               "error_other": "ok"}),
        "disp": ("display", {"power": "on", "volume": 35.0, "muted": "off"}),
    }
    points = [Sample("s1", "gw-101", dev, kind, round(now - 600 + 30 * i, 3), values, "101")
              for i in range(21) for dev, (kind, values) in devices.items()]
    try:
        store.write(points)
    finally:
        store.close()
    return now


@pytest.mark.slow
def test_every_query_runs_on_victoriametrics(victoria: VictoriaMetrics) -> None:
    base = f"http://127.0.0.1:{victoria.port}"
    _write_sample_school(victoria.url)
    wait_until(lambda: _get(base, "/api/v1/query", [("query", "projector_power")])["data"]["result"], 30,
               message="the sample school to be searchable")
    failures: list[str] = []
    for path in DASHBOARDS:
        dash = _load(path)
        for name, query in _variable_queries(dash):
            selector, label = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip()).groups()
            body = _get(base, f"/api/v1/label/{label}/values", [("match[]", _substitute(selector, dash))])
            if body.get("status") != "success" or not body["data"]:
                failures.append(f"{path.name} variable {name}: {body}")
        dash_range = _duration_s(dash["time"]["from"])
        for panel, target in _targets(dash):
            range_s = _duration_s(panel["timeFrom"]) if panel.get("timeFrom") else dash_range
            min_step = _duration_s(target.get("interval") or panel.get("interval") or "15s")
            step = max(min_step, math.ceil(range_s / 1000))
            expr = _substitute(target["expr"], dash, interval=f"{step}s", range_s=range_s)
            now = time.time()
            if target.get("instant"):
                body = _get(base, "/api/v1/query", [("query", expr), ("time", f"{now:.3f}")])
            else:  # Grafana rounds start and end down to a multiple of the step
                start, end = (now - range_s) // step * step, now // step * step
                body = _get(base, "/api/v1/query_range",
                            [("query", expr), ("start", str(start)), ("end", str(end)), ("step", f"{step}s")])
            where = f"{path.name} panel {panel['title']!r} {target['refId']}"
            if body.get("status") != "success":
                failures.append(f"{where}: {body}")
            elif not body["data"]["result"]:
                failures.append(f"{where}: no data for {expr!r}")
    assert not failures, "\n".join(failures)
