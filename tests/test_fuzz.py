"""Shared machinery of the fuzz tests (`tests/test_fuzz_*.py`), and its own self-checks.

Security property fuzzed by every `test_fuzz_*` module: a decoder fed
outside bytes either returns a value or raises its module's own error
(`PayloadError`, `ConfigError`, `DeviceError`, ...); any other exception is
a crash. Modules: `test_fuzz_contract` (MQTT topics and payloads),
`test_fuzz_urls`, `test_fuzz_config` (YAML, profiles, gateway configs,
Modbus registers), `test_fuzz_drivers` (card readers, MDC, LG),
`test_fuzz_pjlink` (over TCP), `test_fuzz_ingest` (central ingest + SQLite).

Shared here:

- `examples(n)` / `fuzz_settings(n)`: example counts, scaled by the
  `FUZZ_EXAMPLES` environment variable for a long campaign (`FUZZ_EXAMPLES=10`
  or `10x`: ten times as many examples).
- `KnownBug` and `only(...)`: a crash the fuzzers already found is a
  `KnownBug` (exception type, the project function it escapes from, message).
  Property tests tolerate exactly those, counting them as hypothesis events
  (`--hypothesis-show-statistics`), so that they keep fuzzing for *new*
  crashes; each known bug also has a `xfail(strict=True)` regression test
  with a minimal reproducer. When a bug is fixed its regression test XPASSes
  (a failure): then delete its `xfail` marker and its `KnownBug` entry.
- JSON strategies (hostile values and tokens, valid contract payloads,
  mutations) and the contract's known bugs, shared with the ingest fuzzer.
"""
from __future__ import annotations

import functools
import json
import os
import re
import time
import traceback
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, settings
from hypothesis import strategies as st

from campus import contract, names
from campus.contract import Command, CommandResult, Event, State, Telemetry
from campus.errors import PayloadError

# ------------------------------------------------------------------ shared machinery

REPO = Path(__file__).resolve().parents[1]


def _scale() -> float:
    raw = os.environ.get("FUZZ_EXAMPLES", "1").strip().lower().rstrip("x") or "1"
    try:
        return max(float(raw), 0.01)
    except ValueError:
        return 1.0


SCALE = _scale()


def examples(n: int) -> int:
    """`n` examples, times the FUZZ_EXAMPLES factor."""
    return max(1, int(n * SCALE))


def fuzz_settings(n: int) -> Callable[[Any], Any]:
    """The settings every fuzz test uses: `n` (scaled) examples, no deadline, big inputs allowed."""
    return settings(max_examples=examples(n), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.filter_too_much])


@dataclass(frozen=True)
class KnownBug:
    """A crash found by fuzzing, not yet fixed: see the module docstring."""

    id: str
    exc: type[BaseException]
    where: str          # "path/of/module.py:function" of the innermost project frame
    message: str = ""   # regex searched in str(exception)

    def matches(self, exc: BaseException) -> bool:
        return isinstance(exc, self.exc) and project_frame(exc) == self.where \
            and re.search(self.message, str(exc)) is not None


@functools.cache
def _project_path(filename: str) -> str | None:
    path = Path(filename).resolve()
    if path.is_relative_to(REPO) and not path.is_relative_to(REPO / "tests"):
        return path.relative_to(REPO).as_posix()
    return None


def project_frame(exc: BaseException) -> str:
    """`path:function` of the innermost frame of the traceback that is project code (not tests, not libraries)."""
    where = ""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        path = _project_path(frame.f_code.co_filename)
        if path is not None:
            where = f"{path}:{frame.f_code.co_name}"
    return where


class only:  # lower case: read as `with only(PayloadError, BUGS) as outcome:`
    """Let `allowed` and known bugs through (recorded in `.error` / `.known`); re-raise anything else."""

    def __init__(self, allowed: type[BaseException] | tuple[type[BaseException], ...],
                 known: Sequence[KnownBug] = ()) -> None:
        self.allowed = allowed
        self.known_bugs = known
        self.error: BaseException | None = None
        self.known: KnownBug | None = None

    def __enter__(self) -> only:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is None:
            return False
        if isinstance(exc, self.allowed):
            self.error = exc
            return True
        for bug in self.known_bugs:
            if isinstance(exc, Exception) and bug.matches(exc):
                self.known = bug
                if currently_in_test_context():
                    event(f"known bug {bug.id}")
                return True
        return False

    @property
    def ok(self) -> bool:
        """The body ran to its end."""
        return self.error is None and self.known is None


def shallow(call: Callable[[], Any]) -> Any:
    """`call()`, re-raising a RecursionError without its ~1000-frame traceback (pytest takes a minute to print it)."""
    try:
        return call()
    except RecursionError as exc:
        raise RecursionError(str(exc)) from None


# JSON: every value json.loads can produce, and literal tokens a hostile sender can write.


@dataclass(frozen=True)
class Raw:
    """A JSON token written verbatim (NaN, 400-digit numbers, deep nesting...)."""

    text: str


def to_json(value: Any, ensure_ascii: bool = True) -> str:
    """json.dumps that writes `Raw` tokens as they are and allows NaN/Infinity."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k), ensure_ascii=ensure_ascii)}:{to_json(v, ensure_ascii)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v, ensure_ascii) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=True)


def json_bytes(value: Any, ensure_ascii: bool = True) -> bytes:
    """The payload bytes; lone surrogates become (invalid) UTF-8 bytes rather than an encoder crash."""
    return to_json(value, ensure_ascii).encode("utf-8", "surrogatepass")


json_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
                | st.text(max_size=20) | st.sampled_from(["\ud800", "\udfff", "a\udc80b"]))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                              max_size=4),
                           max_leaves=16)
finite_json = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=20)
                           | st.floats(allow_nan=False, allow_infinity=False),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=10)
raw_tokens = st.one_of(
    st.sampled_from(["NaN", "-NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400", "-0", "0.0", "1e-400",
                     "9223372036854775808", "18446744073709551616", "-9223372036854775809", "true", "false",
                     "null", '"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', '""', "[]", "{}", "01", "1.", ".5"]),
    st.integers(300, 5000).map(lambda n: "9" * n),
    st.integers(2, 30_000).map(lambda n: "[" * n + "]" * n),
    st.integers(2, 20_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
).map(Raw)
hostile = json_values | raw_tokens

segments = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# Central refuses a ts implausibly far from the time it received the message (contract.clock_ahead):
# half the draws are recent times (a day's offsets around now), half anything.
# (Around the start of today, fixed per run: Hypothesis replays a draw and must get the same value.)
TODAY = time.time() // 86400 * 86400
recent_times = st.floats(min_value=TODAY - 2 * 86400, max_value=TODAY + 86400)
timestamps = recent_times | st.floats(min_value=0, max_value=4e9) | recent_times | st.integers(0, 2**40)
metric_values = (st.integers(-2**53, 2**53) | st.floats(allow_nan=False, allow_infinity=False)
                 | st.text(max_size=256))
# Text of a payload's fields: any character but NUL, which no field may hold (PostgreSQL's text cannot).
short_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=64)
# A room or building name a gateway may report: campus.names rules (one line of visible text, trimmed, NFC).
display_names = (st.text(st.characters(exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), max_size=64)
                 .map(lambda s: unicodedata.normalize("NFC", s).strip())
                 .filter(lambda s: len(s) <= 64 and not names.refused_character(s)))


def _optional(required: dict[str, st.SearchStrategy[Any]],
              optional: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(required, optional=optional)  # type: ignore[arg-type]


valid_dicts: dict[type, st.SearchStrategy[dict[str, Any]]] = {
    Telemetry: _optional({"seq": st.integers(1, 2**62), "ts": timestamps,
                          "values": st.dictionaries(segments, metric_values, max_size=5)}, {}),
    Event: _optional({"seq": st.integers(1, 2**62), "ts": timestamps, "type": segments},
                     {"data": st.dictionaries(st.text(max_size=8), finite_json, max_size=4)}),
    State: _optional({"online": st.booleans(), "ts": timestamps}, {
        "agent": short_text, "boot": timestamps, "since": timestamps, "room": display_names, "building": display_names,
        "interval": timestamps,
        "config_version": st.none() | st.integers(-2**63, 2**63 - 1),
        "outbox": st.dictionaries(st.sampled_from(["pending", "dropped", "last_seq", "instance"]) | st.text(max_size=8),
                                  st.integers(0, 2**53), max_size=3),  # counts and seqs: never negative
        "devices": st.dictionaries(segments, _optional({}, {"status": st.sampled_from(contract.DEVICE_STATUSES),
                                                            "kind": st.sampled_from(contract.DEVICE_KINDS),
                                                            "profile": short_text}), max_size=3)}),
    Command: _optional({"id": short_text.filter(bool), "action": st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z"),
                        "deadline": timestamps},
                       {"params": st.dictionaries(st.text(max_size=8), finite_json, max_size=4), "by": short_text}),
    CommandResult: _optional({"id": short_text.filter(bool), "status": st.sampled_from(contract.FINAL_COMMAND_STATUSES),
                              "ts": timestamps}, {"detail": short_text}),
}
DECODERS: list[type] = list(valid_dicts)


@st.composite
def mutated(draw: st.DrawFn, data: dict[str, Any]) -> Any:
    """A valid payload dict after 1-3 structural mutations (drop, retype, add, nest)."""
    value: Any = dict(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "replace", "add", "inner", "wrap"]))
        keys = list(value) if isinstance(value, dict) else []
        if op == "drop" and keys:
            del value[draw(st.sampled_from(keys))]
        elif op == "replace" and keys:
            value[draw(st.sampled_from(keys))] = draw(hostile)
        elif op == "inner" and keys:
            key = draw(st.sampled_from(keys))
            if isinstance(value[key], dict):
                inner = dict(value[key])
                inner[draw(st.sampled_from([*inner, "x"]) if inner else st.just("x"))] = draw(hostile)
                value[key] = inner
        elif op == "add":
            if isinstance(value, dict):
                value[draw(st.text(max_size=8))] = draw(hostile)
        else:
            value = draw(st.sampled_from([[value], {"payload": value}, Raw("[" * 5000), Raw("1"), Raw("null")]))
    return value


@st.composite
def byte_mutated(draw: st.DrawFn, payload: bytes) -> bytes:
    """Byte-level damage: flip, insert (non-UTF-8 too), truncate, re-encode."""
    data = bytearray(payload)
    op = draw(st.sampled_from(["flip", "insert", "truncate", "utf16", "bom"]))
    if op == "flip" and data:
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif op == "insert":
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))
    elif op == "truncate":
        del data[draw(st.integers(0, len(data))):]
    elif op == "utf16":
        return payload.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")
    else:
        return b"\xef\xbb\xbf" + payload
    return bytes(data)


# ------------------------------------------------------------------ contract: known bugs

C_FLOAT_OVERFLOW = KnownBug("C1 huge int for a float field", OverflowError, "campus/contract.py:_ts",
                            "too large to convert to float")
C_FLOAT_OVERFLOW_STATE = KnownBug("C1 huge int for a float field", OverflowError, "campus/contract.py:decode",
                                  "too large to convert to float")
C_DEPTH = KnownBug("C2 deep nesting", RecursionError, "campus/contract.py:_load", "maximum recursion depth")
C_DIGITS = KnownBug("C3 >4300-digit integer", ValueError, "campus/contract.py:_load", "Exceeds the limit")
C_SURROGATE = KnownBug("C4 str payload with a lone surrogate", UnicodeEncodeError, "campus/contract.py:_load",
                       "surrogates not allowed")
C_DEPTH_ENCODE = KnownBug("C2 deep nesting", RecursionError, "campus/contract.py:_dump", "maximum recursion depth")
C_NAN_ROUNDTRIP = KnownBug("C5 NaN/Infinity inside data/params decode but cannot encode", ValueError,
                           "campus/contract.py:_dump", "Out of range float values")
CONTRACT_BUGS = (C_FLOAT_OVERFLOW, C_FLOAT_OVERFLOW_STATE, C_DEPTH, C_DIGITS, C_SURROGATE)


# ------------------------------------------------------------------ self-checks of the machinery


def test_only_lets_the_allowed_error_through() -> None:
    with only(PayloadError) as outcome:
        Telemetry.decode(b"[]")
    assert isinstance(outcome.error, PayloadError) and outcome.known is None and not outcome.ok
    with only(PayloadError) as outcome:
        pass
    assert outcome.ok


def test_only_re_raises_anything_else() -> None:
    with pytest.raises(ZeroDivisionError), only(PayloadError, CONTRACT_BUGS):
        _ = 1 / 0
    with pytest.raises(ValueError), only(PayloadError, CONTRACT_BUGS):
        raise ValueError("Exceeds the limit")  # right type and message, but not raised in campus/contract.py


def test_known_bug_matches_type_frame_and_message() -> None:
    try:
        Telemetry.decode(b'{"seq":' + b"1" * 4301 + b"}")
    except ValueError as exc:
        assert project_frame(exc) == "campus/contract.py:_load"
        assert C_DIGITS.matches(exc) and not C_DEPTH.matches(exc)
        with only(PayloadError, CONTRACT_BUGS) as outcome:
            raise exc
        assert outcome.known is C_DIGITS
    except PayloadError:
        pass  # C3 fixed (its regression test XPASSes too)


def test_raw_tokens_are_written_verbatim() -> None:
    assert to_json({"a": [Raw("NaN"), 1.5, "\ud800"]}) == '{"a":[NaN,1.5,"\\ud800"]}'
    assert json_bytes("\ud800", ensure_ascii=False) == b'"\xed\xa0\x80"'
    assert examples(10) >= 1
