"""Property-based fuzzing of the JSON API from its own /api/openapi.json: schemathesis
generates valid and invalid requests for every documented operation and the app must
never answer 5xx. The app is the real one (WSGI, no network): a real central database
with gateways, devices, events and points in it, an admin token, and a command service
on a real Mosquitto so that command requests go all the way through.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campus.urls import parse_mqtt_url
from central.commands import CommandService
from dashboards import close_app
from dashboards.auth import RateLimiter
from tests.apps import PEOPLE, add_people, central_db, register_rooms, two_rooms, web_app
from tests.servers import Mosquitto

schemathesis = pytest.importorskip("schemathesis", reason="in the test extra: pip install -e '.[test]'")
from schemathesis import GenerationMode  # noqa: E402

from dashboards.context import central, web  # noqa: E402

pytestmark = pytest.mark.slow

# Enough for each operation to meet odd values, few enough for well under a minute in all.
EXAMPLES_PER_OPERATION = 50


class QuickCommands(CommandService):
    """The real service, but it does not linger for a result no agent will send."""

    def send(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return super().send(*args, **{**kwargs, "wait": 0.05})


@dataclass
class Api:
    app: Flask
    token: str


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("api")
    broker = Mosquitto(tmp / "mosquitto")
    broker.start()
    app = web_app(central_db(tmp, two_rooms))
    c = central(app)
    c.commands = QuickCommands(parse_mqtt_url(broker.url), c.ledger)
    c.commands.start()
    web(app).command_limiter = RateLimiter(10**9)  # fuzz the command path, not the rate limit
    register_rooms(app)
    tokens = add_people(app, {"admin": PEOPLE["admin"]})
    try:
        yield Api(app, tokens["admin"])
    finally:
        close_app(app)
        broker.stop()


@pytest.fixture(scope="module")
def api_schema(api: Api) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", api.app)
    # An event stream (the panel's live state) never ends by itself: read its first
    # event, or give up after 2 s, then close it. The status code is what counts.
    schema.config.max_stream_events = 1
    schema.config.update(request_timeout=2)
    return schema


def operations(schema: schemathesis.BaseSchema) -> list[Any]:
    """Every documented operation; a part of the document schemathesis cannot read fails the test."""
    return [result.ok() for result in schema.get_all_operations()]


_alternate = itertools.count()


# Each operation's examples come from Hypothesis directly, one subtest an operation.
# (schemathesis.pytest.from_fixture renamed pytest's nodes through a private attribute
# that pytest 9.2 removed; this depends on neither.)
def test_api_never_answers_5xx(api: Api, api_schema: schemathesis.BaseSchema, subtests: pytest.Subtests) -> None:
    documented = operations(api_schema)
    assert len(documented) >= 15, f"only {len(documented)} operations in the OpenAPI document"
    for operation in documented:
        cases = st.one_of([operation.as_strategy(generation_mode=mode) for mode in GenerationMode])

        @given(case=cases)
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def never_5xx(case: schemathesis.Case) -> None:
            if case.path.endswith("/devices/{device}/commands") and next(_alternate) % 2:
                # Every other command goes to a device that exists, so the body is fuzzed
                # through the command service and the ledger, not just up to the 404.
                case.path_parameters = {"gateway": "gw-101", "device": "proj"}
            if "{school}" in case.path and next(_alternate) % 2:
                # A school that exists (the timetable body is fuzzed), and a room of it (podium cards).
                case.path_parameters = {**case.path_parameters, "school": "s1",
                                        **({"room": "101"} if "{room}" in case.path else {})}
            response = case.call(headers={"Authorization": f"Bearer {api.token}"})
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r} -> "
                f"{response.status_code} {response.text[:500]}")

        with subtests.test(operation=operation.label):
            never_5xx()
