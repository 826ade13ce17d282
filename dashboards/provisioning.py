"""Provisioning pages for IT staff (role `admin` only): places, gateways, devices, CSV import, broker files.

Routes, all under /provisioning/ (every form carries the CSRF token; every
change is written to the audit trail, refusals and failures too). An admin limited to some schools
(dashboards/auth.py) sees and changes only their gateways, rooms and imports; another school's gateway
is a 404, a form or CSV line naming another school a 403; new schools, the ingest page and the broker
files are the district's (403):

- `GET  /provisioning/gateways`: every gateway with room, online, devices and
  its config versions (wanted in the registry / pushed / applied by the agent);
  `POST` registers a gateway and shows its MQTT password once with the YAML
  config to copy or download.
- `GET  /provisioning/gateways/G`: devices; `POST .../devices` adds one (profile
  picker, per-protocol address fields or JSON, validated as the agent does;
  nothing is saved on error), `POST .../devices/D/remove`, `POST .../push`
  (retained device list on the gateway's config topic), `POST .../password`
  (new MQTT password, shown once), `GET .../config.yaml`.
- `POST /provisioning/push`: push every gateway whose changes are not pushed; each
  gateway's outcome is kept in the registry (`config_push_runs`) and listed on the
  gateways page, never in the session.
- `GET|POST /provisioning/places`: schools, buildings and rooms.
- `GET|POST /provisioning/import`: CSV upload (format: central/provisioning.py).
- `GET  /provisioning/ingest`: the ingest workers' counters and whether they still report.
- `GET|POST /provisioning/broker`: write the Mosquitto passwd/acl/conf to the
  configured directory (`WebConfig.broker_config_dir` if the app has one, else
  $CAMPUS_BROKER_CONFIG_DIR), or download them as a zip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext

from campus.errors import CampusError, ConfigError, PayloadError
from campus.i18n import N_, lazy_gettext, message_of
from central import broker_config, lists, overview
from central import provisioning as prov
from central.registry import Registry
from dashboards.auth import add_nav, audit, login_required, may_see, not_found, refuse, school_scoped, sight
from dashboards.context import central, web
from dashboards.exports import CSV, download
from dashboards.i18n import error_text, format_time, request_language, site_zone
from dashboards.security import safe_target
from protocols import PROTOCOLS

bp = Blueprint("provisioning", __name__, url_prefix="/provisioning")
ADMIN = ("admin",)
GATEWAYS_PAGE = 50  # gateways per page of the gateways list

# Address fields per protocol for the add-device form, (field, kind, placeholder), from the protocol
# table's address declarations: "int" fields become numbers; "source" is a camera index when it is a number.
ADDRESS_FORM: dict[str, list[tuple[str, str, str]]] = {name: entry.address.form() for name, entry in PROTOCOLS.items()}


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    add_nav(app, N_("Provisioning"), "provisioning.gateways", ADMIN)
    prov.ensure_tables(central(app).registry)


# ---------------------------------------------------------------- helpers


@bp.app_template_filter("prov_time")
def _local_time(ts: float | None) -> str:
    """A unix time as the site's date and 24-hour time (dashboards/i18n.py, as everywhere on the dashboard)."""
    return format_time(ts or None, seconds=True)


def _reg() -> Registry:
    return central().registry


def _who() -> str:
    return g.user["user"]


def _mqtt_url() -> str | None:
    return web().config.mqtt_url


def _client() -> Any:
    service = central().commands
    return service.client if service is not None else None


def _broker_dir() -> str | None:
    return web().config.broker_config_dir or os.environ.get("CAMPUS_BROKER_CONFIG_DIR")


def _profiles() -> list[dict[str, Any]]:
    from device_profiles import available_profiles, load_profile

    out = []
    for name in available_profiles():
        try:
            p = load_profile(name)
        except CampusError:
            continue
        out.append({"name": name, "kind": p.kind, "protocol": p.protocol, "model": p.model,
                    "manufacturer": p.manufacturer, "description": p.description})
    return out


def _gateway_rows(paging: lists.Paging | None = None, only: str | None = None
                  ) -> lists.Page[overview.ProvisionedGateway]:
    c = central()
    return overview.provisioned_gateways(c.registry, c.ledger, paging, only, sight(g.user))


def _outside(gateway: str) -> Any:
    """The 404 for a gateway outside a school-scoped admin's schools (None: it is theirs, or the admin is
    district-wide)."""
    return not_found("gateway") if school_scoped(g.user) and not may_see(g.user, gateway) else None


def _not_my_school(school: str, what: str) -> Any:
    """The 403 for a form naming a school outside a school-scoped admin's schools (None: it is theirs)."""
    if not school or sight(g.user).allows_school(school):  # no school: the form's own "required" error
        return None
    audit(what, f"refused {school!r}: outside the account's schools", ok=False)
    return refuse(403, lazy_gettext("school %(school)s is not one of your schools", school=repr(school)))


def _paging() -> lists.Paging:
    """The list's page and search (central/lists.py); a wrong value shows the first page."""
    try:
        return lists.Paging.parse(request.args, default_limit=GATEWAYS_PAGE)
    except PayloadError:
        return lists.Paging(limit=GATEWAYS_PAGE)


def _no_store(resp: Response) -> Response:
    """Pages that show a password must not be kept by the browser or a proxy."""
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp


def _download(text: str | bytes, filename: str, mimetype: str) -> Response:
    return _no_store(download(text, filename, mimetype))  # gateway files hold credentials


# ---------------------------------------------------------------- gateways


@bp.get("/")
@login_required(roles=ADMIN)
def home() -> Any:
    return redirect(url_for("provisioning.gateways"))


@bp.get("/gateways")
@login_required(roles=ADMIN)
def gateways() -> Any:
    return _gateways_page()


def _gateways_page(error: str | None = None, form: dict[str, str] | None = None, status: int = 200) -> Any:
    paging = _paging()
    page = _gateway_rows(paging)
    rows = page.items
    schools = lists.school_ids(_reg().db, sight(g.user))
    # The push runs of every school name gateways: a school-scoped admin sees none (they are the district's).
    runs = [] if school_scoped(g.user) else prov.push_runs(_reg(), 5)
    return render_template("prov_gateways.html", tab="gateways", gateways=rows, schools=schools, error=error,
                           form=form or {}, mqtt_ready=_client() is not None, push_runs=runs,
                           total=page.total, paging=paging, unpushed=lists.unpushed_count(_reg().db, sight(g.user))), \
        status


@bp.post("/gateways")
@login_required(roles=ADMIN)
def register_gateway() -> Any:
    form = {k: request.form.get(k, "").strip() for k in ("school", "building", "room", "gateway")}
    try:
        if not form["gateway"]:
            raise ConfigError(lazy_gettext("gateway: an id is required, e.g. gw-101"))
        if not form["school"]:
            raise ConfigError(lazy_gettext("%(field)s: %(reason)s", field="school", reason=lazy_gettext("required")))
        if not form["room"]:
            raise ConfigError(lazy_gettext("%(field)s: %(reason)s", field="room", reason=lazy_gettext("required")))
        if (refused := _not_my_school(form["school"], "provision.gateway")) is not None:
            return refused
        password = _reg().register_gateway(form["gateway"], form["school"], form["room"], form["building"])
    except CampusError as exc:
        audit("provision.gateway", f"register {form['gateway']!r} refused: {exc}", ok=False)
        return _gateways_page(error=error_text(exc), form=form, status=400)
    audit("provision.gateway", f"registered {form['gateway']} in {form['school']}/{form['room']}")
    return _show_credentials(form["gateway"], password, new=True)


def _show_credentials(gateway: str, password: str, *, new: bool) -> Response:
    info = _reg().gateway_info(gateway)
    text = prov.gateway_yaml(_reg(), gateway, _mqtt_url(), password)
    resp = make_response(render_template("prov_registered.html", tab="gateways", gw=info, password=password,
                                         yaml_text=text, new=new, mqtt_url=_mqtt_url()))
    return _no_store(resp)


@bp.get("/gateways/<gateway>")
@login_required(roles=ADMIN)
def gateway(gateway: str) -> Any:
    return _outside(gateway) or _gateway_page(gateway)


def _gateway_page(gateway: str, error: str | None = None, form: dict[str, str] | None = None,
                  status: int = 200) -> Any:
    row = next(iter(_gateway_rows(only=gateway).items), None)
    if row is None:
        return render_template("error.html", status=404, message=gettext("no gateway %(gateway)s",
                                                                         gateway=repr(gateway))), 404
    return render_template("prov_gateway.html", tab="gateways", gw=row, profiles=_profiles(), address_form=ADDRESS_FORM,
                           error=error, form=form or {}, mqtt_ready=_client() is not None), status


def _address_from_form(protocol: str) -> dict[str, Any]:
    raw = request.form.get("address_json", "").strip()
    if raw:
        try:
            return prov.parse_mapping(raw, "address")
        except ConfigError as exc:
            raise ConfigError(lazy_gettext("field %(field)s: %(reason)s", field="address (JSON)",
                                           reason=message_of(exc))) from None
    address: dict[str, Any] = {}
    for name, kind, _hint in ADDRESS_FORM.get(protocol, []):
        value = request.form.get(f"addr.{protocol}.{name}", "").strip()
        if not value:
            continue
        if kind == "int" or (kind == "source" and value.isdigit()):
            try:
                address[name] = int(value)
            except ValueError:
                raise ConfigError(lazy_gettext("field %(field)s: %(reason)s", field="address." + name, reason=lazy_gettext(
                    "must be a whole number, got %(value)s", value=repr(value)))) from None
        else:
            address[name] = value
    return address


@bp.post("/gateways/<gateway>/devices")
@login_required(roles=ADMIN)
def add_device(gateway: str) -> Any:
    from device_profiles import load_profile

    if (refused := _outside(gateway)) is not None:
        return refused
    form = {k: v for k, v in request.form.items() if k != "csrf"}
    device_id = form.get("device", "").strip()
    profile = form.get("profile", "").strip()
    info = _reg().gateway_info(gateway)
    if info is None:
        return render_template("error.html", status=404, message=gettext("no gateway %(gateway)s",
                                                                         gateway=repr(gateway))), 404
    try:
        if not device_id:
            raise ConfigError(lazy_gettext("field %(field)s: %(reason)s", field="device id",
                                           reason=lazy_gettext("required, e.g. env or projector")))
        if not profile:
            raise ConfigError(lazy_gettext("field %(field)s: %(reason)s", field="profile",
                                           reason=lazy_gettext("pick the device model")))
        try:
            protocol = load_profile(profile).protocol
        except CampusError as exc:
            raise ConfigError(lazy_gettext("field %(field)s: %(reason)s", field="profile",
                                           reason=message_of(exc))) from None
        address = _address_from_form(protocol)
        try:
            options = prov.parse_mapping(form.get("options_json", ""), "options")
        except ConfigError as exc:
            raise ConfigError(lazy_gettext("field %(field)s: %(reason)s", field="options",
                                           reason=message_of(exc))) from None
        if any(d["id"] == device_id for d in info["devices"]) and not form.get("replace"):
            raise ConfigError(lazy_gettext("field %(field)s: %(reason)s", field="device id", reason=lazy_gettext(
                "%(device)s is already on %(gateway)s; tick 'replace' to change it", device=repr(device_id),
                gateway=gateway)))
        _reg().add_device(gateway, device_id, profile, address, options)
    except CampusError as exc:
        audit("provision.device", f"add {gateway}/{device_id or '?'} refused: {exc}", ok=False)
        return gateway_page_error(gateway, error_text(exc), form)
    audit("provision.device", f"added {gateway}/{device_id} ({profile}) {json.dumps(address)}")
    flash(gettext("Device %(device)s saved. Push the config to send it to the gateway.", device=device_id))
    return redirect(url_for("provisioning.gateway", gateway=gateway))


def gateway_page_error(gw: str, message: str, form: dict[str, str]) -> Any:
    return _gateway_page(gw, error=message, form=form, status=400)


@bp.post("/gateways/<gateway>/devices/<device>/remove")
@login_required(roles=ADMIN)
def remove_device(gateway: str, device: str) -> Any:
    if (refused := _outside(gateway)) is not None:
        return refused
    try:
        _reg().remove_device(gateway, device)
    except CampusError as exc:
        audit("provision.device", f"remove {gateway}/{device} refused: {exc}", ok=False)
        return gateway_page_error(gateway, error_text(exc), {})
    audit("provision.device", f"removed {gateway}/{device}")
    flash(gettext("Device %(device)s removed. Push the config to send the change to the gateway.", device=device))
    return redirect(url_for("provisioning.gateway", gateway=gateway))


def _push(gateway: str) -> int:
    client = _client()
    if client is None:
        raise CampusError(lazy_gettext("this web app has no MQTT connection (start it with --mqtt) and cannot push"))
    return prov.push_config(_reg(), client, gateway, _who(), site_zone=site_zone())


@bp.post("/gateways/<gateway>/push")
@login_required(roles=ADMIN)
def push(gateway: str) -> Any:
    if (refused := _outside(gateway)) is not None:
        return refused
    try:
        version = _push(gateway)
    except CampusError as exc:
        audit("provision.push", f"{gateway}: {exc}", ok=False)
        return gateway_page_error(gateway, gettext("Push failed: %(error)s", error=error_text(exc)), {})
    audit("provision.push", f"{gateway} device list v{version} published (retained)")
    flash(gettext("Device list v%(version)s pushed to %(gateway)s; it applies it as soon as it is connected.",
                  version=version, gateway=gateway))
    return redirect(safe_target(request.form.get("back"), url_for("provisioning.gateway", gateway=gateway)))


@bp.post("/push")
@login_required(roles=ADMIN)
def push_all() -> Any:
    """Push every gateway whose changes are not pushed. The outcome of each (a district has thousands) is
    kept in the registry and shown on the gateways page; the flash message, kept in the session cookie
    until shown, only counts (a cookie over 4 KB is dropped by the browser)."""
    client = _client()
    if client is None:
        audit("provision.push", "push all: no MQTT connection", ok=False)
        return _gateways_page(error=gettext("this web app has no MQTT connection (start it with --mqtt) and cannot "
                                            "push"), status=400)
    todo, offset, total = [], 0, 1
    while offset < total:  # every registered gateway, a page at a time
        page = _gateway_rows(lists.Paging(limit=lists.MAX_LIMIT, offset=offset))
        todo += [row.id for row in page.items if row.pushed != row.config_version and row.applied != row.config_version]
        offset, total = offset + lists.MAX_LIMIT, page.total
    if not todo:
        flash(gettext("Nothing to push: every gateway is up to date."))
        return redirect(url_for("provisioning.gateways"))
    run = prov.push_all(_reg(), client, todo, _who(), site_zone=site_zone())
    summary = f"push all #{run['id']}: {len(run['pushed'])} of {run['wanted']} pushed"
    if run["failed"]:
        gateway, problem = run["failed"][0]
        summary += f"; stopped at {gateway}: {problem[:150]}"
    audit("provision.push", summary, ok=not run["failed"])
    counts = {"id": run["id"], "pushed": len(run["pushed"]), "wanted": run["wanted"]}
    if run["failed"]:
        flash(gettext("Push all #%(id)s: %(pushed)s of %(wanted)s pushed; stopped at %(gateway)s: %(problem)s.",
                      gateway=run["failed"][0][0], problem=run["failed"][0][1][:150], **counts))
    else:
        flash(gettext("Push all #%(id)s: %(pushed)s of %(wanted)s pushed.", **counts))
    return redirect(url_for("provisioning.gateways") + "#push-runs")


@bp.post("/gateways/<gateway>/password")
@login_required(roles=ADMIN)
def new_password(gateway: str) -> Any:
    if (refused := _outside(gateway)) is not None:
        return refused
    try:
        password = prov.new_gateway_password(_reg(), gateway)
    except CampusError as exc:
        audit("provision.gateway", f"new password for {gateway} refused: {exc}", ok=False)
        return gateway_page_error(gateway, error_text(exc), {})
    audit("provision.gateway", f"new MQTT password for {gateway}")
    return _show_credentials(gateway, password, new=False)


@bp.get("/gateways/<gateway>/config.yaml")
@login_required(roles=ADMIN)
def config_yaml(gateway: str) -> Any:
    if (refused := _outside(gateway)) is not None:
        return refused
    if _reg().gateway_info(gateway) is None:
        return render_template("error.html", status=404, message=gettext("no gateway %(gateway)s",
                                                                         gateway=repr(gateway))), 404
    try:
        text = prov.gateway_yaml(_reg(), gateway, _mqtt_url())
    except CampusError as exc:  # a record that fails the name checks (prov.check_record)
        return render_template("error.html", status=400, message=error_text(exc)), 400
    return _download(text, f"{gateway}.yaml", "application/yaml")


# ---------------------------------------------------------------- places


@bp.route("/places", methods=["GET", "POST"])
@login_required(roles=ADMIN)
def places() -> Any:
    error, status = None, 200
    form = {k: request.form.get(k, "").strip() for k in ("what", "school", "name", "building", "room")}
    if request.method == "POST":
        if form["what"] == "school" and school_scoped(g.user) and not sight(g.user).allows_school(form["school"]):
            audit("provision.place", f"refused new school {form['school']!r}: the account is limited to schools",
                  ok=False)
            return refuse(403, lazy_gettext("new schools are the district's; your account is limited to some schools"))
        if (refused := _not_my_school(form["school"], "provision.place")) is not None:
            return refused
        try:
            if form["what"] == "school":
                if not form["school"]:
                    raise ConfigError(lazy_gettext("school id: required, e.g. no1-middle"))
                prov.create_school(_reg(), form["school"], form["name"])
                audit("provision.place", f"school {form['school']} ({form['name']})")
                flash(gettext("School %(school)s saved.", school=form["school"]))
            else:
                if not form["school"]:
                    raise ConfigError(lazy_gettext("%(field)s: %(reason)s", field="school",
                                                   reason=lazy_gettext("required")))
                _reg().ensure_room(form["school"], form["room"], form["building"])
                audit("provision.place", f"room {form['school']}/{form['building']}/{form['room']}")
                flash(gettext("Room %(room)s saved.", room=form["room"]))
            return redirect(url_for("provisioning.places"))
        except CampusError as exc:
            audit("provision.place", f"refused {form}: {exc}", ok=False)
            error, status = error_text(exc), 400
    return render_template("prov_places.html", tab="places", schools=prov.places(_reg(), sight(g.user).schools),
                           error=error,
                           form=form), status


# ---------------------------------------------------------------- CSV import


@bp.route("/import", methods=["GET", "POST"])
@login_required(roles=ADMIN)
def import_csv() -> Any:
    report, filename = None, ""
    if request.method == "POST":
        upload = request.files.get("file")
        data = upload.read() if upload else b""
        filename = upload.filename if upload else ""
        if not data:
            data = request.form.get("text", "").encode()
            filename = filename or "pasted text"
        report = prov.import_csv(_reg(), data, sight(g.user).schools)
        if report.ok:
            audit("provision.import", f"{filename}: {report.rows} rows; {report.created}")
        else:
            audit("provision.import", f"{filename}: refused, {len(report.errors)} errors, first: {report.errors[0]}",
                  ok=False)
    columns = [("school", N_("required"), N_("school id (letters, digits, - _ .), created if new")),
               ("building", "", N_("building name (one line, at most 100 characters); sets the room's building")),
               ("room", N_("required"), N_("room name (one line, at most 64 characters), created if new")),
               ("gateway", "", N_("gateway id; a new one is registered in this room and gets MQTT credentials")),
               ("device", "", N_("device id on that gateway (added, or replaced if it exists)")),
               ("profile", N_("with device"), N_("device model: one of the profiles below")),
               ("address", N_("with device"), N_("JSON object or key=value; key=value")),
               ("options", "", N_("driver options, same syntax"))]
    resp = make_response(render_template("prov_import.html", tab="import", report=report, filename=filename,
                                         columns=columns, profiles=_profiles(),
                                         example=prov.EXAMPLE_CSV_ZH if request_language() == "zh-CN" else prov.EXAMPLE_CSV,
                                         mqtt_url=_mqtt_url()),
                         200 if report is None or report.ok else 403 if report.outside else 400)
    return _no_store(resp) if report is not None and report.credentials else resp


@bp.get("/import/example.csv")
@login_required(roles=ADMIN)
def example_csv() -> Any:
    # In the request's language: the import reads a Chinese or an English header alike.
    # The Chinese one starts with a byte-order mark: without it Excel reads UTF-8 as GBK (history_csv.py).
    text = "\ufeff" + prov.EXAMPLE_CSV_ZH if request_language() == "zh-CN" else prov.EXAMPLE_CSV
    return _download(text, "campus-import-example.csv", CSV)


# ---------------------------------------------------------------- broker files


@bp.get("/ingest")
@login_required(roles=ADMIN, district=True)
def ingest() -> Any:
    """The central ingest workers as they last reported (GET /api/ingest has the same, as JSON)."""
    return render_template("prov_ingest.html", tab="ingest", workers=central().ledger.workers())


@bp.route("/broker", methods=["GET", "POST"])
@login_required(roles=ADMIN, district=True)
def broker() -> Any:
    target = _broker_dir()
    written = None
    error = None
    district_text = request.form.get("district", "").strip()
    if request.method == "POST":
        try:
            # The district broker: also a bridge account and a bridge conf per school.
            district = broker_config.parse_district(district_text) if district_text else None
            bridges = f", bridges to {district_text}" if district else ""
            if request.form.get("action") == "write":
                if not target:
                    raise ConfigError(lazy_gettext("no broker config directory is configured (set "
                                                   "CAMPUS_BROKER_CONFIG_DIR for the web app); download the files "
                                                   "instead"))
                files = broker_config.write(_reg(), target, district=district)
                audit("provision.broker_config", f"wrote {target}: {len(files.gateways)} gateways{bridges}")
                written = {"dir": str(Path(target).resolve()), "gateways": len(files.gateways),
                           "new_service": files.new_service_passwords,
                           "bridges": [f"{broker_config.bridge_account(school)}.conf" for school in sorted(files.bridges)]}
            else:
                files = broker_config.render(_reg(), out_dir=Path(target or "/etc/mosquitto/campus"),
                                             district=district)
                audit("provision.broker_config", f"downloaded: {len(files.gateways)} gateways{bridges}")
                return _download(broker_config.zip_bundle(files), "campus-broker.zip", "application/zip")
        except CampusError as exc:
            audit("provision.broker_config", str(exc), ok=False)
            error = error_text(exc)
    reg = _reg()
    return render_template("prov_broker.html", tab="broker", target=target, written=written, error=error,
                           gateways=lists.gateway_count(reg.db), accounts=broker_config.SERVICE_ACCOUNTS,
                           district=district_text), \
        400 if error else 200
