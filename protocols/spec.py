"""The language a protocol module describes itself in: address fields as data, and its table entry.

Why data and not code: one declaration of a device address gives the check the gateway makes at
load time (`Address.check`, one error naming the field), the fields of the provisioning form
(`Address.form`) and the address's JSON Schema shape (`Address.json_schema`), so the three can
never disagree. Field types are few on purpose:

- `text`: a non-blank string (`max_chars`, `printable`, `pattern` restrict it further),
- `int`: a whole number (never a bool) within `minimum`..`maximum`,
- `choice`: one of `choices`,
- `source`: a camera source, i.e. a camera index (0 or more), a file path, or a URL whose scheme is
  one of `schemes` and which names a host.

The driver and the simulator are named as "module:attribute" strings and imported only on first
use, so a gateway without a camera never imports OpenCV and a protocol module imports nothing heavy.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

FIELD_TYPES = ("text", "int", "choice", "source")


def either(values: tuple[Any, ...] | list[Any]) -> str:
    """`5, 6, 7 or 8`: a list of alternatives as a message says it."""
    shown = [str(v) for v in values]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def describe_source(source: str | int) -> str:
    """A camera source for messages and logs, without credentials (rtsp://user:pass@host)."""
    if isinstance(source, int):
        return f"camera index {source}"
    if "://" in source:
        parts = urlsplit(source)
        host = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    return source


@dataclass(frozen=True)
class Field:
    """One address field: its name, type, range or choices, default and the words that explain it."""

    name: str
    type: str
    label: str = ""            # what the value is, as a message says it: "the projector's host name or IP address"
    hint: str = ""             # the form's placeholder (an example); the default value when empty
    default: Any = None        # None: no default
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    max_chars: int | None = None
    printable: bool = False
    pattern: str = ""          # text: a regular expression the whole value must match (a meter's 12 digits)
    choices: tuple[Any, ...] = ()
    schemes: tuple[str, ...] = ()
    must: str = ""             # the "must be ..." phrase, when the generated one would be less clear
    secret: bool = False       # never repeat the value in a message (a password)
    form: bool = True          # offered as a field of the provisioning form (else: address JSON only)

    def __post_init__(self) -> None:
        if self.type not in FIELD_TYPES:
            raise ValueError(f"field {self.name}: type {self.type!r} is not one of {', '.join(FIELD_TYPES)}")

    @property
    def expectation(self) -> str:
        """What a good value is, as "<name> must be ..." ends."""
        if self.must:
            return self.must
        if self.type == "int":
            if self.minimum is not None and self.maximum is not None:
                return f"a whole number {self.minimum}-{self.maximum}"
            if self.minimum == 1:
                return "a positive whole number"
            return "a whole number" if self.minimum is None else f"a whole number of {self.minimum} or more"
        if self.type == "choice":
            return either(self.choices)
        return self.label

    def problem(self, value: Any) -> str | None:
        """Why `value` is not good for this field (a message naming it), or None."""
        if self.type == "source":
            return self._source_problem(value)
        if self.type == "text":
            ok = isinstance(value, str) and bool(value.strip()) \
                and (self.max_chars is None or len(value) <= self.max_chars) \
                and (not self.printable or value.isprintable()) \
                and (not self.pattern or re.fullmatch(self.pattern, value) is not None)
        elif self.type == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) \
                and (self.minimum is None or value >= self.minimum) \
                and (self.maximum is None or value <= self.maximum)
        else:
            ok = not isinstance(value, bool) and isinstance(value, int | float | str) and value in self.choices
        if ok:
            return None
        return f"{self.name} must be {self.expectation}" + ("" if self.secret else f", got {value!r}")

    def _source_problem(self, source: Any) -> str | None:
        if isinstance(source, bool) or not isinstance(source, str | int):
            return f"{self.name} must be {self.label}, got {source!r}"
        if isinstance(source, int):
            return None if source >= 0 else f"{self.name}: a camera index is 0 or more, got {source}"
        if not source.strip():
            return f"{self.name} must not be empty"
        if "://" in source:
            scheme = source.split("://", 1)[0].lower()
            if scheme not in self.schemes:
                return (f"{self.name}: URL scheme {scheme!r} is not supported; use "
                        f"{', '.join(s + '://' for s in self.schemes)} or a file path")
            if not urlsplit(source).hostname:
                return f"{self.name}: {describe_source(source)!r} has no host"
        return None

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any]
        if self.type == "text":
            out = {"type": "string", "minLength": 1, "pattern": r"\S"}
            if self.max_chars is not None:
                out["maxLength"] = self.max_chars
            if self.pattern:
                out["pattern"] = f"^(?:{self.pattern})$"
        elif self.type == "int":
            out = {"type": "integer"}
            if self.minimum is not None:
                out["minimum"] = self.minimum
            if self.maximum is not None:
                out["maximum"] = self.maximum
        elif self.type == "choice":
            out = {"enum": list(self.choices)}
        else:
            out = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "minLength": 1, "pattern": r"\S"}]}
        if self.label:
            out["description"] = self.label
        if self.default is not None:
            out["default"] = self.default
        return out

    @property
    def form_kind(self) -> str:
        """How the form reads the text typed: "int" fields become numbers, a numeric "source" an index."""
        if self.type == "int" or (self.type == "choice" and all(type(c) is int for c in self.choices)):
            return "int"
        return "source" if self.type == "source" else "text"


@dataclass(frozen=True)
class Address:
    """A protocol's device address: its fields (no others are accepted) and which of them are alternatives.

    `choose` lists alternatives of which exactly one must be given, each with what it means, e.g.
    `(("host", "Modbus TCP"), ("serial", "Modbus RTU port"))`.
    """

    fields: tuple[Field, ...]
    choose: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names) or any(n not in names for n, _ in self.choose):
            raise ValueError(f"address fields {names} repeat a name, or `choose` names an unknown field")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    def check(self, address: Any) -> None:
        """Raise ValueError naming the first address field that is wrong: unknown fields first, then
        each field in declared order, then the alternatives."""
        if not isinstance(address, dict):
            raise ValueError("address must be a mapping")
        for key in address:
            if key not in self.names:
                raise ValueError(f"unknown address field {key!r}; known: {', '.join(self.names)}")
        for f in self.fields:
            if f.name not in address:
                if f.required:
                    raise ValueError(f"{f.name} is required: {f.label}")
                continue
            problem = f.problem(address[f.name])
            if problem:
                raise ValueError(problem)
        if self.choose and sum(name in address for name, _ in self.choose) != 1:
            raise ValueError(f"give either {' or '.join(f'{name} ({what})' for name, what in self.choose)}")

    def value(self, address: dict[str, Any], name: str) -> Any:
        """The field's value in `address`, else its declared default."""
        return address.get(name, self.field(name).default)

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "object", "additionalProperties": False,
            "properties": {f.name: f.json_schema() for f in self.fields},
        }
        required = [f.name for f in self.fields if f.required]
        if required:
            out["required"] = required
        if self.choose:
            out["oneOf"] = [{"required": [name]} for name, _ in self.choose]
        return out

    def form(self) -> list[tuple[str, str, str]]:
        """(field, kind, placeholder) for each field the provisioning form offers; a hint is English, marked with
    campus.i18n.N_, and the page shows it translated."""
        return [(f.name, f.form_kind, f.hint or ("" if f.default is None else str(f.default)))
                for f in self.fields if f.form]


def load(target: str) -> Any:
    """Import "package.module:attribute" now (drivers and simulators are named, not imported, by the table)."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Protocol:
    """One entry of the protocol table (`protocols.PROTOCOLS`).

    `driver` and `simulator` are "module:attribute" paths. A simulator is a function
    `(DeviceConfig, index) -> simulator`, or, with `shared_link`, `(list of (index, DeviceConfig)) ->
    list of (simulator, {device id: handle})` for protocols whose devices share one link (a Modbus
    bus: one simulated server answers every unit on it). `profile_schema` is a JSON Schema that a
    profile of this protocol must also meet (e.g. Modbus metrics need a register).
    """

    name: str
    label: str
    address: Address
    driver: str
    simulator: str | None = None
    shared_link: bool = False
    profile_schema: dict[str, Any] = field(default_factory=dict)

    def driver_class(self) -> Any:
        return load(self.driver)

    def simulator_factory(self) -> Any:
        return None if self.simulator is None else load(self.simulator)
