"""Strict JSON in and out of the web app.

In: Python's `json` reads `NaN`, `Infinity` and duplicate keys, none of which is JSON (RFC 8259). A
`set_volume` with `"level": NaN` once got as far as the command ledger; `/api/commands` then sent
`NaN` back, which no browser parses, and the teacher's panel hung on "Connecting…". Every request
body is now read by `campus.contract.loads_strict`, and a refusal is a 400 that names the problem.

Out: everything the app answers in JSON (the API, the panel's event stream) is written with
`allow_nan=False`. Should a non-finite number have been stored anyway (by an older version), it is
sent as `null` and logged, rather than as text a client cannot read, or as a 500.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from flask import Flask, Request, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from campus import contract
from campus.errors import PayloadError
from campus.i18n import N_, LazyText, lazy_gettext, message_of

log = logging.getLogger(__name__)


def _finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (only called when dumping failed)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(obj: Any, **kwargs: Any) -> str:
    """JSON text any client can parse: NaN and infinities become null (and are logged), never `NaN`."""
    kwargs["allow_nan"] = False
    try:
        return json.dumps(obj, **kwargs)
    except ValueError:
        log.warning("a non-finite number in a JSON answer was sent as null")
        return json.dumps(_finite(obj), **kwargs)


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON (jsonify, request.get_json) made strict both ways."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("default", self.default)
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        kwargs.setdefault("sort_keys", self.sort_keys)
        return dumps(obj, **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return contract.loads_strict(s, N_("the body"))
        except PayloadError as exc:
            raise ValueError(message_of(exc)) from None  # what Request.get_json expects of a bad body


class StrictRequest(Request):
    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        # Flask hides the reason outside debug mode; the caller needs it to mend the request.
        if e is None:
            raise UnsupportedMediaType(lazy_gettext("the body must be JSON, sent with Content-Type: application/json"))
        raise BadRequest(message_of(e))


def install(app: Flask) -> None:
    app.json = StrictJSONProvider(app)
    app.request_class = StrictRequest


def json_object() -> dict[str, Any]:
    """The request's JSON object; a 400 (415 for another content type) naming the problem if it is not one."""
    body = request.get_json()
    if not isinstance(body, dict):
        raise BadRequest(lazy_gettext("the body must be a JSON object, got %(what)s",
                                      what=LazyText(_JSON_TYPES.get(type(body), _OTHER))))
    return body


_OTHER = N_("something else")
_JSON_TYPES = {list: N_("an array"), str: N_("a string"), int: N_("a number"), float: N_("a number"),
               bool: N_("a boolean"), type(None): "null"}
