"""The city's view of its districts, and the door their pushes come in by (central/city.py says why).

* `/city` every district with its schools' totals and when its newest rollup was made; `/city/<d>` a
  district's schools. Read-only: what the city knows, it was told by the districts.
* `GET /api/districts`, `GET /api/districts/<d>/schools` the same as JSON (facility, admin), paged like
  every list (`limit`, `offset`, `q`, `X-Total-Count`).
* `POST /api/city/rollups` a district's push: authenticated by that district's token (`campus city
  add-district NAME`), not by a person's login; the body checked whole (one 400 naming the field,
  nothing changed) and written only to the token's own district.

Served by every `campus web` (a district's city tables are empty and no token opens them); `campus web
--city` also makes `/city` the home page and puts it in the top bar.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Flask, abort, jsonify, redirect, render_template, request, url_for

from campus import names
from campus.errors import CampusError, StoreError
from campus.i18n import N_, lazy_gettext, message_of
from central import city, lists
from dashboards.api import paged, paging
from dashboards.auth import add_nav, audit, login_required
from dashboards.context import central, web
from dashboards.strict_json import json_object

bp = Blueprint("city", __name__)
STAFF = ("admin", "facility")


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    if web(app).config.city:
        add_nav(app, N_("City"), "city.page", STAFF)
        app.before_request(_home_is_the_city)


def _home_is_the_city() -> Any:
    if request.path == "/" and request.method == "GET":
        return redirect(url_for("city.page"))
    return None


@bp.errorhandler(CampusError)
def _bad_request(exc: CampusError) -> Any:
    """A bad query parameter is a 400 naming it; a database that cannot answer now a 503."""
    status = 503 if isinstance(exc, StoreError) else 400
    if request.path.startswith("/api/"):
        return jsonify({"error": message_of(exc)}), status
    return render_template("error.html", status=status, message=message_of(exc)), status


def _district(name: str) -> str:
    """The district of the URL, or a 404 naming it."""
    try:
        names.identifier(name, "district")
    except names.BadName:
        abort(404, lazy_gettext("no district %(name)s: not a valid id", name=repr(name[:64])))
    if not city.district_exists(central().db, name):
        abort(404, lazy_gettext("no district %(name)s", name=repr(name)))
    return name


# ---------------------------------------------------------------- the push


def _refuse(status: int, message: str, field: str | None = None, **extra: Any) -> Any:
    audit("city.push", f"refused {status}: {message}"[:300], ok=False, user=extra.pop("who", ""))
    body = {"error": message, **extra}
    if field is not None:
        body["field"] = field
    return jsonify(body), status


@bp.post("/api/city/rollups")
def receive() -> Any:
    """A district's rollup: 200 `{stored, seq}` (stored false: the city holds this seq already, a replay),
    409 with the seq held when it holds a newer one."""
    limiter, address = web().token_limiter, request.remote_addr or ""
    if limiter.blocked(address):
        return _refuse(429, "too many wrong tokens from this address; wait a minute")
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.startswith("Bearer ") else ""
    district = city.district_for_token(central().db, token) if token else None
    if district is None:
        limiter.failed(address)
        return _refuse(401, "a district's push token is required (campus city add-district NAME prints one)")
    who = f"district:{district}"
    try:
        rollup = city.parse_rollup(json_object(), time.time())
    except city.RollupError as exc:
        return _refuse(400, str(exc), exc.field, who=who)
    if rollup.district != district:
        return _refuse(403, f"this token pushes for district {district!r}, not {rollup.district!r}", "district",
                       who=who)
    stored, held = city.store_rollup(central().db, rollup)
    if not stored and held > rollup.seq:
        return _refuse(409, f"the city holds seq {held} of {district}, newer than {rollup.seq}", "seq", seq=held,
                       who=who)
    return jsonify({"stored": stored, "seq": held})


# ---------------------------------------------------------------- reading


@bp.get("/api/districts")
@login_required(roles=STAFF, district=True)  # other districts: not for an account of some schools
def api_districts() -> Any:
    """Every district: its newest push (seq, generated_at, received_at) and its schools' totals."""
    page = city.districts(central().db, paging())
    return paged(page.items, page.total)


@bp.get("/api/districts/<district>/schools")
@login_required(roles=STAFF, district=True)  # other districts: not for an account of some schools
def api_district_schools(district: str) -> Any:
    page = city.district_schools(central().db, _district(district), paging())
    return paged(page.items, page.total)


@bp.get("/city")
@login_required(roles=STAFF, district=True)  # other districts: not for an account of some schools
def page() -> Any:
    p = paging()
    found = city.districts(central().db, p)
    return render_template("city.html", districts=found.items, total=found.total, paging=p, now=time.time())


@bp.get("/city/<district>")
@login_required(roles=STAFF, district=True)  # other districts: not for an account of some schools
def district_page(district: str) -> Any:
    p = paging()
    name = _district(district)
    found = city.district_schools(central().db, name, p)
    summary = next(iter(city.districts(central().db, lists.Paging(limit=1), only=name).items), None)
    return render_template("city_district.html", district=name, summary=summary, schools=found.items,
                           total=found.total, paging=p, now=time.time())
