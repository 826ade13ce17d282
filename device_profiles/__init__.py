"""Device profiles: one YAML file per device model, and their one loader.

A profile says what a device model is (kind, protocol), what it measures
(metrics with units and, for Modbus, the register map and scaling), which
actions it accepts and which fields tell its health. Every profile is
validated against `schema.json` when it is loaded; an error names the file,
the line and the field.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from campus import contract
from campus.errors import ActionRejected, CampusError, ProfileError
from campus.i18n import N_, LazyText, lazy_gettext
from campus.yamlfile import YamlDoc
from protocols import PROTOCOLS

PROFILE_DIR = Path(__file__).parent / "profiles"
# An input name as schema.json allows it, for a device whose profile central does not ship.
_INPUT_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str = ""
    register: int | None = None
    function: str = "holding"
    type: str = "uint16"
    word_order: str = "big"
    scale: float = 1.0
    offset: float = 0.0
    values: tuple[str, ...] = ()

    @property
    def register_count(self) -> int:
        return 2 if self.type in ("int32", "uint32", "float32") else 1


@dataclass(frozen=True)
class Profile:
    name: str
    kind: str
    protocol: str
    metrics: dict[str, Metric]
    actions: tuple[str, ...] = ()
    inputs: dict[str, str | int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    serial: dict[str, Any] = field(default_factory=dict)
    health: dict[str, dict[str, Any]] = field(default_factory=dict)
    manufacturer: str = ""
    model: str = ""
    description: str = ""
    source: str = ""


@cache
def _schema() -> dict[str, Any]:
    """schema.json completed from the protocol table: the protocol names, each protocol's rules for its
    profiles (Modbus metrics need a register), and each protocol's address shape (for tools and docs;
    the gateway config checks addresses with the same declaration, protocols.spec.Address.check)."""
    schema = json.loads(resources.files(__package__).joinpath("schema.json").read_text())
    schema["properties"]["protocol"]["enum"] = list(PROTOCOLS)
    schema["allOf"] = [{"if": {"properties": {"protocol": {"const": name}}}, "then": entry.profile_schema}
                       for name, entry in PROTOCOLS.items() if entry.profile_schema]
    schema["$defs"]["address"] = {name: entry.address.json_schema() for name, entry in PROTOCOLS.items()}
    return schema


def profile_schema() -> dict[str, Any]:
    """The complete JSON Schema of a device profile (a copy: callers may change it)."""
    return copy.deepcopy(_schema())


def parse_profile(text: str, source: str) -> Profile:
    """Validate and build a profile from YAML text; `source` names it in errors."""
    doc = YamlDoc(text, source, ProfileError)
    data = doc.data
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile must be a YAML mapping")
    errors = sorted(jsonschema.Draft202012Validator(_schema()).iter_errors(data), key=lambda e: [str(p) for p in e.path])
    if errors:
        raise doc.fail(list(errors[0].absolute_path), errors[0].message)
    metrics = {name: Metric(name=name, **{k: (tuple(v) if k == "values" else v) for k, v in spec.items()
                                          if k != "description"})
               for name, spec in data["metrics"].items()}
    for name, spec in data["metrics"].items():
        for key, limit in (("scale", 1e6), ("offset", 1e9)):
            value = spec.get(key)
            if value is not None and not (abs(value) <= limit and math.isfinite(value) and (key != "scale" or value > 0)):
                raise doc.fail(["metrics", name, key], f"must be a finite number of at most {limit:g}"
                               + (" and above 0" if key == "scale" else ""))
    for action in data.get("actions", []):
        if action == "select_input" and not data.get("inputs"):
            raise doc.fail(["actions"], "select_input needs an 'inputs' map")
    return Profile(name=data["name"], kind=data["kind"], protocol=data["protocol"], metrics=metrics,
                   actions=tuple(data.get("actions", ())), inputs=dict(data.get("inputs", {})),
                   timings=dict(data.get("timings", {})), serial=dict(data.get("serial", {})),
                   health=dict(data.get("health", {})), manufacturer=data.get("manufacturer", ""),
                   model=data.get("model", ""), description=data.get("description", ""), source=source)


def load_profile_file(path: str | Path) -> Profile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read profile ({getattr(exc, 'strerror', None) or exc})") from None
    return parse_profile(text, str(path))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


@cache
def load_profile(name: str) -> Profile:
    """A shipped profile by name, or a profile file by path."""
    if "/" in name or name.endswith((".yaml", ".yml")):
        return load_profile_file(name)
    shipped = available_profiles()
    if name not in shipped:  # checked against the list: a name is never handed to the file system
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise ProfileError(f"profile {shown!r} not found; shipped profiles: {', '.join(shipped)}")
    path = PROFILE_DIR / f"{name}.yaml"
    profile = load_profile_file(path)
    if profile.name != name:
        raise ProfileError(f"{path}: field name: {profile.name!r} does not match the file name {name!r}")
    return profile


def shipped_profile(name: str) -> Profile | None:
    """A shipped profile by name, or None if `name` is not one (a gateway may run a profile file of its
    own) or it cannot be loaded. For names that come from gateways: never opens a path."""
    if name not in available_profiles():
        return None
    try:
        return load_profile(name)
    except CampusError:
        return None


_NONE = N_("none")  # what an action without parameters takes


def check_action(action: str, params: Any, profile: Profile | None) -> None:
    """Refuse a command a device must not get, before it is stored or sent: the one check of an action
    and its parameters, made by the API (with the profile, if central ships it) and again by the agent
    (with the device's own profile) before the device is touched.

    Parameters are those of `contract.ACTION_PARAMS`, each once, with its type and range; anything else
    is refused. `ActionRejected.field` names what is wrong (`action`, `params`, `params.level`, ...)."""
    if action not in contract.ACTIONS:
        raise ActionRejected(lazy_gettext("action %(action)s is not one of %(actions)s", action=repr(str(action)[:40]),
                                          actions=", ".join(contract.ACTIONS)), field="action")
    if profile is not None and action not in profile.actions:
        raise ActionRejected(lazy_gettext("action %(action)s is not supported by profile %(profile)s",
                                          action=repr(action), profile=profile.name), field="action")
    if not isinstance(params, dict):
        raise ActionRejected(lazy_gettext("params must be an object, got %(type)s", type=type(params).__name__),
                             field="params")
    takes = contract.ACTION_PARAMS[action]
    for name in params:
        if name not in takes:
            raise ActionRejected(lazy_gettext("%(field)s is not a parameter of %(action)s (it takes %(takes)s)",
                                              field="params." + str(name)[:40], action=action,
                                              takes=", ".join(takes) or LazyText(_NONE)),
                                 field=f"params.{str(name)[:40]}")
    for name in takes:
        if name not in params:
            raise ActionRejected(lazy_gettext("%(field)s is missing: %(action)s needs it", field="params." + name,
                                              action=action), field=f"params.{name}")
    if action == "select_input":
        name = params["input"]
        if profile is not None:
            if not isinstance(name, str) or name not in profile.inputs:
                raise ActionRejected(lazy_gettext("params.input %(value)s is not one of %(inputs)s", value=_shown(name),
                                                  inputs=", ".join(profile.inputs)), field="params.input")
        elif not isinstance(name, str) or not _INPUT_NAME.fullmatch(name):
            raise ActionRejected(lazy_gettext("params.input %(value)s is not an input name", value=_shown(name)),
                                 field="params.input")
    elif action == "set_volume":
        level = params["level"]
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 100:
            raise ActionRejected(lazy_gettext("params.level must be a whole number from 0 to 100, got %(value)s",
                                              value=_shown(level)), field="params.level")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"
