"""Alarms to people, in the web app: notification channels, deliveries and maintenance mutes.

Pages:

* `/health/notifications` (admin): the channels (e-mail, WeCom, DingTalk, signed webhook) with a form to
  add or change one and a "send test message" button; the deliveries (pending, sent, failed, attempts,
  last error) with "retry" for a failed one; the mutes.
* `/health/mutes` (facility and admin): mute a room or a school until a time (maintenance), end a mute.

JSON (same rights): `GET/POST /api/notifications/channels`, `GET/PUT/DELETE
/api/notifications/channels/<id>`, `POST /api/notifications/channels/<id>/test`, `GET
/api/notifications/deliveries` (limit, offset, status; total in X-Total-Count), `POST
/api/notifications/deliveries/<id>/retry`, `GET/POST /api/notifications/mutes`, `DELETE
/api/notifications/mutes/<id>`.

An account limited to some schools sees and changes only its schools' channels, deliveries and mutes
(a district-wide channel is the district's: a 404 for it, a 403 to make one). Every refused value is one
400 naming the field; secrets are shown masked. The sending itself is central's (central/notify).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, flash, g, jsonify, redirect, render_template, request, url_for
from flask_babel import Babel, gettext

from campus.errors import PayloadError
from campus.i18n import N_, lazy_gettext
from central import lists, overview
from central.notify import channels as chan
from central.notify import outbox
from central.notify.senders import SendError
from central.registry import row_id
from dashboards.auth import add_nav, audit, login_required, not_found, refuse, school_scoped, sight
from dashboards.context import central
from dashboards.i18n import LANGUAGE_NAMES, catalog, error_text, format_time, site_zone

bp = Blueprint("notifications", __name__)

STAFF = ("admin", "facility")
ADMIN = ("admin",)


def register(app: Flask) -> None:
    """Blueprint, top-bar link, and the notifier's messages said with this app's catalogs (central has none)."""
    if "babel" not in app.extensions:  # the app's own Babel set-up (language selection) wins when it has one
        Babel(app)
    app.register_blueprint(bp)
    add_nav(app, N_("Notifications"), "notifications.page", ADMIN)
    add_nav(app, N_("Mutes"), "notifications.mutes", STAFF)  # facility managers find maintenance mutes here
    notifier = central(app).notifier
    if notifier is not None:
        notifier.translations = catalog
        notifier.zone = site_zone(app)  # for schools without a timetable zone of their own


def _schools() -> tuple[str, ...] | None:
    """The schools of an account limited to some; None for a district-wide one."""
    return tuple(g.user["schools"]) if school_scoped(g.user) else None


def _error(status: int, message: str, field: str = "") -> Any:
    body = {"error": message, **({"field": field} if field else {})}
    return jsonify(body), status


def _refused(exc: chan.ChannelError) -> Any:
    """A refused value: 400 naming the field, said in the request's language."""
    return _error(400, error_text(exc), exc.field)


def _body() -> dict[str, Any]:
    """The JSON object of a request (strict_json has refused malformed JSON already); a form as a dict."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise chan.ChannelError("body", lazy_gettext("must be a JSON object"))
        return body
    form = request.form.to_dict()
    form["enabled"] = form.get("enabled", "") == "on"
    return form


def _check_school(data: chan.ChannelInput) -> Any | None:
    """The refusal for a channel outside the account's schools, or None."""
    schools = _schools()
    if schools is None:
        return None
    if data.school is None:
        return refuse(403, lazy_gettext("a channel for every school belongs to the whole district; your account is "
                                        "limited to some schools"))
    if data.school not in schools:
        return _refused(chan.ChannelError("school", lazy_gettext("no school %(school)r in your schools",
                                                                 school=data.school)))
    return None


# ---------------------------------------------------------------- pages


def _page(error: str = "", form: dict[str, Any] | None = None, status: int = 200) -> Any:
    reg, schools = central().registry, _schools()
    try:
        status_filter = request.args.get("status") or None
        deliveries, total = outbox.list_deliveries(reg, 100, 0, status_filter, schools)
    except ValueError:
        deliveries, total = outbox.list_deliveries(reg, 100, 0, None, schools)
    places = overview.places(reg, sight(g.user))
    return render_template("health_notifications.html", channels=chan.list_channels(reg, schools),
                           deliveries=deliveries, total=total, mutes=chan.list_mutes(reg, schools),
                           schools=places.schools, kinds=chan.KINDS, severities=chan.SEVERITIES, langs=chan.LANGS,
                           msgtypes=chan.MSGTYPES, language_names=LANGUAGE_NAMES,
                           error=error, form=form or {}, tab="notifications", district_wide=schools is None), status


@bp.get("/health/notifications")
@login_required(roles=ADMIN)
def page() -> Any:
    return _page()


@bp.post("/health/notifications/channels")
@login_required(roles=ADMIN)
def create_channel_form() -> Any:
    return _save_form(None)


@bp.post("/health/notifications/channels/<chid>")
@login_required(roles=ADMIN)
def update_channel_form(chid: str) -> Any:
    found = _channel(chid)
    if found is None:
        return not_found("channel")
    return _save_form(found)


def _save_form(found: dict[str, Any] | None) -> Any:
    form = request.form.to_dict()
    try:
        data = chan.parse_channel(central().registry, _body(), kind=found["kind"] if found else None)
    except chan.ChannelError as exc:
        return _page(error_text(exc), form, 400)
    refused = _check_school(data)
    if refused is not None:
        return refused
    try:
        saved = chan.save_channel(central().registry, data, found["id"] if found else None)
    except chan.ChannelError as exc:
        return _page(error_text(exc), form, 400)
    audit("notify_channel", f"{'changed' if found else 'added'} {saved['kind']} channel #{saved['id']} {saved['name']}")
    flash(gettext("Saved: %(name)s.", name=saved["name"]))
    return redirect(url_for("notifications.page"))


@bp.post("/health/notifications/channels/<chid>/delete")
@login_required(roles=ADMIN)
def delete_channel_form(chid: str) -> Any:
    found = _channel(chid)
    if found is None:
        return not_found("channel")
    chan.delete_channel(central().registry, found["id"])
    audit("notify_channel", f"deleted channel #{found['id']} {found['name']}")
    flash(gettext("Deleted: %(name)s.", name=found["name"]))
    return redirect(url_for("notifications.page"))


@bp.post("/health/notifications/channels/<chid>/test")
@login_required(roles=ADMIN)
def test_channel_form(chid: str) -> Any:
    found = _channel(chid)
    if found is None:
        return not_found("channel")
    problem = _send_test(found)
    flash(problem or gettext("Test message sent through %(name)s.", name=found["name"]))
    return redirect(url_for("notifications.page"))


@bp.post("/health/notifications/deliveries/<did>/retry")
@login_required(roles=ADMIN)
def retry_form(did: str) -> Any:
    delivery_id = row_id(did)
    if delivery_id is None or not outbox.retry_delivery(central().registry, delivery_id, _schools()):
        return not_found("delivery")
    audit("notify_retry", f"delivery #{delivery_id}")
    return redirect(url_for("notifications.page"))


@bp.route("/health/mutes", methods=["GET", "POST"])
@login_required(roles=STAFF)
def mutes() -> Any:
    reg, schools = central().registry, _schools()
    error, status = "", 200
    if request.method == "POST":
        try:
            mute = chan.add_mute(reg, request.form.to_dict(), g.user["user"], site_zone(), schools)
        except chan.ChannelError as exc:
            error, status = error_text(exc), 400
        else:
            audit("notify_mute", f"muted {mute['school']}{'/' + mute['room'] if mute['room'] else ''} until "
                                 f"{mute['until']:.0f}: {mute['reason']}")
            flash(gettext("Muted until %(time)s.", time=format_time(mute["until"])))
            return redirect(url_for("notifications.mutes"))
    places = overview.places(reg, sight(g.user))
    return render_template("health_mutes.html", mutes=chan.list_mutes(reg, schools), schools=places.schools,
                           error=error, form=request.form, tab="mutes"), status


@bp.post("/health/mutes/<mid>/end")
@login_required(roles=STAFF)
def end_mute_form(mid: str) -> Any:
    mute_id = row_id(mid)
    if mute_id is None or not chan.end_mute(central().registry, mute_id, _schools()):
        return not_found("mute")
    audit("notify_mute", f"ended mute #{mute_id}")
    return redirect(url_for("notifications.mutes"))


# ---------------------------------------------------------------- JSON


def _channel(raw: str) -> dict[str, Any] | None:
    channel_id = row_id(raw)
    return None if channel_id is None else chan.get_channel(central().registry, channel_id, _schools())


def _send_test(found: dict[str, Any]) -> str:
    """Send a test message; '' if it was taken, else why not (audited either way)."""
    notifier = central().notifier
    if notifier is None:
        return gettext("Notifications are not running in this program.")
    try:
        notifier.send_test(found["id"])
    except (SendError, LookupError) as exc:
        audit("notify_test", f"channel #{found['id']} {found['name']}: {exc}", ok=False)
        return gettext("The test message was not sent: %(error)s", error=str(exc))
    audit("notify_test", f"channel #{found['id']} {found['name']}")
    return ""


@bp.get("/api/notifications/channels")
@login_required(roles=ADMIN)
def api_channels() -> Any:
    return jsonify(chan.list_channels(central().registry, _schools()))


@bp.post("/api/notifications/channels")
@login_required(roles=ADMIN)
def api_create_channel() -> Any:
    try:
        data = chan.parse_channel(central().registry, _body())
        refused = _check_school(data)
        if refused is not None:
            return refused
        saved = chan.save_channel(central().registry, data)
    except chan.ChannelError as exc:
        return _refused(exc)
    audit("notify_channel", f"added {saved['kind']} channel #{saved['id']} {saved['name']}")
    return jsonify(saved), 201


@bp.get("/api/notifications/channels/<chid>")
@login_required(roles=ADMIN)
def api_channel(chid: str) -> Any:
    found = _channel(chid)
    return jsonify(found) if found is not None else not_found("channel")


@bp.put("/api/notifications/channels/<chid>")
@login_required(roles=ADMIN)
def api_update_channel(chid: str) -> Any:
    found = _channel(chid)
    if found is None:
        return not_found("channel")
    try:
        data = chan.parse_channel(central().registry, _body(), kind=found["kind"])
        refused = _check_school(data)
        if refused is not None:
            return refused
        saved = chan.save_channel(central().registry, data, found["id"])
    except chan.ChannelError as exc:
        return _refused(exc)
    audit("notify_channel", f"changed {saved['kind']} channel #{saved['id']} {saved['name']}")
    return jsonify(saved)


@bp.delete("/api/notifications/channels/<chid>")
@login_required(roles=ADMIN)
def api_delete_channel(chid: str) -> Any:
    found = _channel(chid)
    if found is None:
        return not_found("channel")
    chan.delete_channel(central().registry, found["id"])
    audit("notify_channel", f"deleted channel #{found['id']} {found['name']}")
    return jsonify({"deleted": found["id"]})


@bp.post("/api/notifications/channels/<chid>/test")
@login_required(roles=ADMIN)
def api_test_channel(chid: str) -> Any:
    found = _channel(chid)
    if found is None:
        return not_found("channel")
    problem = _send_test(found)  # the receiver's refusal is the answer's content, not this server's failure
    return jsonify({"sent": not problem, "channel": found["id"], **({"error": problem} if problem else {})})


@bp.get("/api/notifications/deliveries")
@login_required(roles=ADMIN)
def api_deliveries() -> Any:
    try:
        paging = lists.Paging.parse(request.args, default_limit=100, max_limit=1000)
        rows, total = outbox.list_deliveries(central().registry, paging.limit, paging.offset,
                                             request.args.get("status") or None, _schools())
    except (PayloadError, ValueError) as exc:
        return _error(400, error_text(exc), "status" if isinstance(exc, ValueError) else "")
    resp = jsonify(rows)
    resp.headers["X-Total-Count"] = str(total)
    return resp


@bp.post("/api/notifications/deliveries/<did>/retry")
@login_required(roles=ADMIN)
def api_retry(did: str) -> Any:
    delivery_id = row_id(did)
    if delivery_id is None or not outbox.retry_delivery(central().registry, delivery_id, _schools()):
        return not_found("delivery")
    audit("notify_retry", f"delivery #{delivery_id}")
    return jsonify({"retried": delivery_id})


@bp.get("/api/notifications/mutes")
@login_required(roles=STAFF)
def api_mutes() -> Any:
    return jsonify(chan.list_mutes(central().registry, _schools()))


@bp.post("/api/notifications/mutes")
@login_required(roles=STAFF)
def api_add_mute() -> Any:
    try:
        mute = chan.add_mute(central().registry, _body(), g.user["user"], site_zone(), _schools())
    except chan.ChannelError as exc:
        return _refused(exc)
    audit("notify_mute", f"muted {mute['school']}{'/' + mute['room'] if mute['room'] else ''} until "
                         f"{datetime.fromtimestamp(mute['until']).isoformat(timespec='minutes')}: {mute['reason']}")
    return jsonify(mute), 201


@bp.delete("/api/notifications/mutes/<mid>")
@login_required(roles=STAFF)
def api_end_mute(mid: str) -> Any:
    mute_id = row_id(mid)
    if mute_id is None or not chan.end_mute(central().registry, mute_id, _schools()):
        return not_found("mute")
    audit("notify_mute", f"ended mute #{mute_id}")
    return jsonify({"ended": mute_id})
