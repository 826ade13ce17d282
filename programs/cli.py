"""The `campus` command line: one console script for every program of the system (the top floor:
it may import every package; nothing imports it).

A user mistake (bad argument, invalid config, unreachable server) ends with
one line `campus: error: ...` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from campus.errors import CampusError
from campus.signals import run_until_signal, wait_for_signal

if TYPE_CHECKING:
    from dashboards import WebConfig


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    # Libraries that are chatty at INFO/DEBUG about every frame or connection.
    for noisy in ("pymodbus", "amqtt", "transitions", "werkzeug", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("amqtt.broker").setLevel(logging.CRITICAL)


# ---------------------------------------------------------------- commands


def cmd_agent(args: argparse.Namespace) -> None:
    from device_profiles.config import load_gateway_config
    from edge_agent.agent import run_agent

    config = load_gateway_config(args.config)
    run_until_signal(lambda stop: run_agent(config, stop))


def cmd_sim(args: argparse.Namespace) -> None:
    from device_profiles.config import load_gateway_config
    from firmware_stubs.runner import run_simulators

    config = load_gateway_config(args.config)
    run_until_signal(lambda stop: run_simulators(config, stop))


def cmd_ingest(args: argparse.Namespace) -> None:
    from central.db import central_db_url
    from central.schema_watch import SchemaWatch
    from central.service import Central, CentralConfig
    from programs.services import start_ingest

    # Ingest workers may be many: no command service (ingest has its own connection), no alarm monitor
    # or scheduler (the web instances run those).
    config = CentralConfig(store_url=args.store, db_url=central_db_url(args.db, args.store), mqtt_url=args.mqtt,
                           commands=False, background=False)
    with Central.open(config, check_store=True) as central:
        watch = SchemaWatch(central.db)
        ingest = start_ingest(central, args.mqtt, name=args.name, share_group=args.share or None,
                              session_expiry=args.session_expiry, ack_max_delay=args.ack_max_delay)
        try:  # a signal, or the database upgraded under us (SchemaChanged, reported once stopped)
            wait_for_signal(ingest.stop_event, tick=watch.poll)
        finally:
            ingest.stop()  # SIGTERM's way: the last batch written and acked, the rest left with the broker


def site_config(args: argparse.Namespace, **web: object) -> WebConfig:
    """The WebConfig of the options `campus web` and `campus jobs` share (`add_site_options`): the broker,
    the store, the database, the city above a district, the site's language and time zone; `web`: the
    web-only fields."""
    from central.city_push import CityLink
    from central.db import central_db_url
    from dashboards import WebConfig

    link = CityLink.from_options(args.city_url, args.city_token, args.district)
    if link is not None and web.get("city"):
        raise CampusError("--city is the city's instance; --city-url, --city-token and --district a district's")
    return WebConfig(store_url=args.store, db_url=central_db_url(args.db, args.store), mqtt_url=args.mqtt,
                     city_link=link, lang=args.lang, timezone=args.timezone, **web)  # type: ignore[arg-type]


def cmd_web(args: argparse.Namespace) -> None:
    from pathlib import Path

    from central.db import sqlite_path
    from central.registry import check_token
    from dashboards.oidc import OidcConfig
    from programs.services import serve_web

    if args.admin_token is not None:
        check_token(args.admin_token, "--admin-token")
    oidc = OidcConfig.from_options({name: getattr(args, f"oidc_{name}") for name in OIDC_OPTIONS},
                                   secret_file=args.oidc_client_secret_file)
    from central.energy import tariff_from

    try:  # the option, else CAMPUS_TARIFF: a malformed one stops the start, naming it
        tariff = tariff_from(args.tariff)
    except ValueError as exc:
        raise CampusError(f"{'--tariff' if args.tariff else '$CAMPUS_TARIFF'}: {exc}") from None
    config = site_config(args, trusted_proxies=args.proxy, city=args.city, oidc=oidc, tariff=tariff,
                         background=not args.no_jobs)
    # The first admin's password: beside the SQLite file; with a server database, where it was started.
    password_dir = (sqlite_path(config.db_url) or Path("campus.db")).resolve().parent
    serve_web(config, args.host or "127.0.0.1", args.http_port, workers=args.workers, threads=args.threads,
              pin=not args.no_pin, password_dir=password_dir, admin_token=args.admin_token)


def cmd_jobs(args: argparse.Namespace) -> None:
    from programs.services import run_jobs

    run_jobs(site_config(args))


def cmd_users(args: argparse.Namespace) -> None:
    import getpass

    from central.db import central_db_url
    from central.registry import Registry

    registry = Registry(central_db_url(args.db))
    try:
        if args.users_command == "add":
            if args.no_password:
                password = None  # signs in with the education platform; an existing password is kept
            elif args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = getpass.getpass("password: ")
            rooms = []
            for spec in args.room or []:
                school, sep, room = spec.partition(":")
                if not sep:
                    raise CampusError(f"--room {spec!r}: write SCHOOL:ROOM")
                rooms.append((school, room))
            registry.add_user(args.name, password, args.role, rooms, args.school or [])
            print(f"user {args.name} ({args.role}) saved")
        elif args.users_command == "token":
            print(registry.issue_token(args.name, args.label))
    finally:
        registry.close()


def cmd_city(args: argparse.Namespace) -> None:
    from central import city
    from central.db import central_db_url, open_database

    db = open_database(central_db_url(args.db))
    try:
        token = city.add_district(db, args.name)
    finally:
        db.close()
    print(token)
    print(f"campus city: district {args.name} admitted; give it this token (shown once): campus web ... "
          f"--city-url URL-OF-THIS-CITY --district {args.name} --city-token TOKEN, or CAMPUS_CITY_TOKEN",
          file=sys.stderr)


def cmd_db(args: argparse.Namespace) -> None:
    from central import migrations
    from central.db import Database, central_db_url

    db = Database(central_db_url(args.db))
    try:
        db.check()
        want = migrations.head()
        if args.db_command == "upgrade":
            before = migrations.ensure_current(db, upgrade=True)
            print(f"campus db: {db.name} " + (f"already at schema {want}" if before == want
                                              else f"upgraded from schema {before or 'none'} to {want}"))
        else:
            with db.read("cannot read the schema version") as conn:
                now = migrations.current(conn)
            print(f"campus db: {db.name} at schema {now or 'none'}; this release needs {want}"
                  + ("" if now == want else ": run `campus db upgrade`"))
    finally:
        db.close()


def cmd_broker_config(args: argparse.Namespace) -> None:
    import os
    from pathlib import Path

    from central import broker_config
    from central.db import ENV_VAR, central_db_url, sqlite_path
    from central.registry import Registry

    url = central_db_url(args.db or os.environ.get(ENV_VAR) or "sqlite:///campus-demo-data/campus.db")
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise CampusError(f"no central database at {path}; give --db URL (or set {ENV_VAR})")
    registry = Registry(url)
    try:
        district = broker_config.parse_district(args.district) if args.district else None
        files = broker_config.write(registry, args.out, listen=broker_config.parse_listen(args.listen),
                                    persistence_dir=args.persistence_dir, owner=args.owner,
                                    district=district,
                                    district_ca=args.district_ca or broker_config.DEFAULT_DISTRICT_CA,
                                    auth=args.auth, dynsec_plugin=args.dynsec_plugin)
    finally:
        registry.close()
    out = Path(args.out).resolve()
    print(f"campus broker-config: {len(files.gateways)} gateways + service accounts "
          f"{', '.join(broker_config.SERVICE_ACCOUNTS)} -> {out}/{{{broker_config.DYNSEC_FILE},passwd,acl,"
          "mosquitto.conf} (mosquitto.conf uses "
          f"{'the dynamic-security plugin' if args.auth == 'dynsec' else 'passwd and acl'})")
    print(f"campus broker-config: service account passwords in {out / broker_config.SERVICE_FILE}: "
          + (f"new for {', '.join(files.new_accounts)}" if files.new_accounts else "kept")
          + (", the others kept" if 0 < len(files.new_accounts) < len(files.passwords) else ""))
    if district:
        print(f"campus broker-config: bridge accounts and confs of {len(files.bridges)} schools -> "
              f"{out / broker_config.BRIDGES_DIR}/bridge-SCHOOL.conf: copy each to that school broker's "
              "/etc/mosquitto/campus/conf.d/ (mode 0640, group mosquitto)")
    if args.auth == "dynsec":
        print("campus broker-config: restart Mosquitto to apply (its dynamic-security plugin reads the file at start)")
    else:
        print("campus broker-config: reload Mosquitto (SIGHUP) to apply")


def cmd_demo(args: argparse.Namespace) -> None:
    from programs.demo import Demo

    demo = Demo(rooms=args.rooms, schools=args.schools, http_port=args.http_port, data_dir=args.data_dir, mqtt=args.mqtt,
                store=args.store, admin_token=args.admin_token, db=args.db)
    demo.run(duration=args.duration)


DB_URLS = "sqlite:///PATH or postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE"
OIDC_OPTIONS = ("issuer", "client_id", "name", "scope", "user_claim", "role_claim", "role_map", "rooms_claim",
                "schools_claim")


def _language(value: str) -> str:
    from dashboards.i18n import language_tag

    tag = language_tag(value)
    if tag is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not zh-CN or en")
    return tag


def _timezone(value: str) -> str:
    from dashboards.i18n import check_timezone

    try:
        return check_timezone(value)
    except CampusError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_site_options(p: argparse.ArgumentParser) -> None:
    """The options of a site's central that `campus web` and `campus jobs` both take (`site_config` reads
    them): written once, so that the two programs of a district are started with the same words."""
    p.add_argument("--mqtt", default=None, help="broker for sending commands (the panels' and the schedules')")
    p.add_argument("--store", required=True, help="sqlite:///PATH, victoriametrics://host:port, influxdb://…")
    p.add_argument("--db", default=None, help=f"the central database (registry and ledger), {DB_URLS} "
                   "(default: $CAMPUS_DB, else the SQLite store itself)")
    p.add_argument("--city-url", default=None, metavar="URL", help="this district pushes its schools' rollups to "
                   "the city at URL, e.g. https://city.example:8443/ (default: $CAMPUS_CITY_URL)")
    p.add_argument("--city-token", default=None, metavar="TOKEN", help="the token `campus city add-district` printed "
                   "on the city (default: $CAMPUS_CITY_TOKEN, which keeps it out of the process list)")
    p.add_argument("--district", default=None, metavar="NAME", help="this district's name at the city "
                   "(default: $CAMPUS_DISTRICT)")
    p.add_argument("--lang", type=_language, default="zh-CN", metavar="LANG",
                   help="the pages' language where neither the account nor the browser names one: zh-CN "
                   "(default) or en")
    p.add_argument("--timezone", type=_timezone, default="Asia/Shanghai", metavar="ZONE",
                   help="the site's time zone, an IANA name (default Asia/Shanghai): of pages mixing schools, and "
                   "of one school's pages, exports and rollups unless its timetable names its own")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="campus", description="campus-iot: classroom gateways, ingest and dashboards")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="a whole simulated school on this machine")
    p.add_argument("--rooms", type=_positive_int, default=3, help="classrooms to simulate per school (default 3)")
    p.add_argument("--schools", type=_positive_int, default=1,
                   help="schools to simulate, each of --rooms classrooms: a district (default 1)")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds (default: run until Ctrl-C)")
    p.add_argument("--http-port", type=_port, default=8080, help="dashboard port on 127.0.0.1 (default 8080)")
    p.add_argument("--data-dir", default="campus-demo-data", help="where the demo keeps its files")
    p.add_argument("--mqtt", default=None, help="use this broker instead of the embedded one")
    p.add_argument("--store", default=None, help="store URL (default: SQLite in the data dir)")
    p.add_argument("--db", default=None, help=f"the central database, {DB_URLS} (default: $CAMPUS_DB, else the "
                   "SQLite store's file, else ledger.db in the data dir)")
    p.add_argument("--admin-token", default=None, help="admin API token, at least 16 characters "
                   "(default: random, printed)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("agent", help="one edge agent (one classroom gateway)")
    p.add_argument("--config", required=True, help="gateway config YAML")
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("sim", help="simulators for the devices a gateway config names")
    p.add_argument("--config", required=True, help="gateway config YAML")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("ingest", help="central ingest from MQTT into the store")
    p.add_argument("--mqtt", required=True, help="mqtt://[user:pass@]host:port")
    p.add_argument("--store", required=True, help="sqlite:///PATH, victoriametrics://host:port, influxdb://…")
    p.add_argument("--db", default=None, help=f"the central database, {DB_URLS} "
                   "(default: $CAMPUS_DB, else the SQLite store itself)")
    p.add_argument("--name", default="ingest", help="client name; one persistent MQTT session per name")
    p.add_argument("--share", default=None, help="MQTT 5 shared-subscription group, for several workers")
    p.add_argument("--session-expiry", type=_seconds(1, 2**32 - 1), default=None, metavar="S",
                   help="how long the broker keeps this worker's session and queue while it is away "
                        "(default 86400; 60 with --share: the broker keeps handing an away worker its share)")
    p.add_argument("--ack-max-delay", type=_seconds(0.1, 3600), default=240.0, metavar="S",
                   help="the longest a stored message waits for central's acknowledgement to its gateway "
                        "(default 240; acks are batched, see docs/architecture.md)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("web", help="the dashboard and JSON API")
    add_site_options(p)
    p.add_argument("--http-port", type=_port, default=8080)
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--admin-token", default=None, help="an admin API token (at least 16 characters)")
    p.add_argument("--proxy", type=_proxies, default=0, metavar="N",
                   help="served behind N reverse proxies: believe their X-Forwarded-For/-Proto/-Host/-Port "
                   "(client address for rate limits, HTTPS for Secure cookies). Default 0: believe nobody")
    p.add_argument("--workers", type=_count(1, 64), default=1, metavar="N",
                   help="server processes, each with its own database connections and panel poller (default 1)")
    p.add_argument("--threads", type=_count(1, 10000), default=None, metavar="T",
                   help="threads per process; every open classroom panel holds one (default 1000, started "
                   "as needed)")
    p.add_argument("--no-pin", action="store_true",
                   help="let each server process run on any CPU (default: each on one CPU of those it may use, "
                   "worker N on the Nth: one process's threads then take turns at Python's lock on one core "
                   "instead of across cores, which halved the CPU of 500 panels opening at once)")
    p.add_argument("--no-jobs", action="store_true",
                   help="serve only: leave central's background jobs (alarm monitor, scheduler, usage rollup, "
                   "attendance retention, city push) to `campus jobs` (a district's set-up; default: each "
                   "worker runs them too, one at a time through leases in the database)")
    p.add_argument("--tariff", default=None, metavar="YUAN", help="electricity price in yuan per kWh for the "
                   "energy pages (default: $CAMPUS_TARIFF, else 0.6)")
    p.add_argument("--city", action="store_true", help="this is a city's instance: its home page shows the "
                   "districts that push to it (campus city add-district) and their schools")
    oidc = p.add_argument_group("sign-in with the education platform (OpenID Connect; docs/oidc.md); each "
                                "option defaults to CAMPUS_OIDC_<OPTION>, e.g. CAMPUS_OIDC_ISSUER")
    oidc.add_argument("--oidc-issuer", metavar="URL", help="the platform's issuer URL (https://; its "
                      "/.well-known/openid-configuration is read); none: local passwords only")
    oidc.add_argument("--oidc-client-id", metavar="ID", help="this site's client id at the platform")
    oidc.add_argument("--oidc-client-secret-file", metavar="PATH", help="a file whose first line is the "
                      "client secret (default: $CAMPUS_OIDC_CLIENT_SECRET; never on the command line)")
    oidc.add_argument("--oidc-name", metavar="NAME", help="the platform's name on the login page's button")
    oidc.add_argument("--oidc-scope", metavar="SCOPES", help="scopes asked for (default 'openid profile')")
    oidc.add_argument("--oidc-user-claim", metavar="CLAIM", help="the claim that names the campus-iot "
                      "account (default sub; e.g. preferred_username or a staff number's claim)")
    oidc.add_argument("--oidc-role-claim", metavar="CLAIM", help="the claim with the role "
                      "(default campus_role)")
    oidc.add_argument("--oidc-role-map", metavar="VALUE=ROLE,...", help="the role claim's values as roles, "
                      "e.g. 教师=teacher,信息中心=admin (default: admin, facility, teacher mean themselves)")
    oidc.add_argument("--oidc-rooms-claim", metavar="CLAIM", help="the claim listing a teacher's rooms as "
                      "SCHOOL:ROOM (default campus_rooms)")
    oidc.add_argument("--oidc-schools-claim", metavar="CLAIM", help="the claim listing the schools a staff "
                      "account is limited to (default campus_schools)")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("jobs", help="central's background jobs only (alarm monitor, scheduler, usage rollup, "
                       "attendance retention, city push), beside `campus web --no-jobs`")
    add_site_options(p)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("broker-config", help="Mosquitto config, password file and per-gateway ACL from the registry")
    p.add_argument("--db", default=None, help=f"the central database, {DB_URLS} "
                   "(default: $CAMPUS_DB, else the demo's campus-demo-data/campus.db)")
    p.add_argument("--out", required=True, help="directory for dynamic-security.json, passwd, acl, mosquitto.conf, "
                   "service-accounts.txt")
    p.add_argument("--listen", default="127.0.0.1:1883", help="listener of the generated mosquitto.conf, "
                   "HOST:PORT (default 127.0.0.1:1883)")
    p.add_argument("--persistence-dir", default="/var/lib/mosquitto", help="Mosquitto's persistence_location")
    p.add_argument("--owner", default=None, help="give passwd, acl and dynamic-security.json to this user "
                   "(the one Mosquitto runs as, e.g. mosquitto; needs root)")
    p.add_argument("--district", default=None, metavar="HOST:PORT", help="this is the district broker, reached by "
                   "school brokers at HOST:PORT (its TLS listener): add a bridge account per school and write "
                   "bridges/bridge-SCHOOL.conf for each school broker")
    p.add_argument("--district-ca", default=None, metavar="PATH",
                   help="where school brokers keep the CA of the district's certificate "
                   "(default /etc/mosquitto/campus/certs/ca.crt)")
    p.add_argument("--auth", choices=("dynsec", "files"), default="dynsec",
                   help="what the generated mosquitto.conf uses: dynsec (default), the dynamic-security plugin with "
                   "dynamic-security.json, every gateway and bridge bound to its own client id; files, passwd and "
                   "acl as before (no client-id binding). Both are written either way")
    p.add_argument("--dynsec-plugin", default=None, metavar="PATH", help="the plugin's file on the broker host "
                   "(default: Debian's, e.g. /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so)")
    p.set_defaults(func=cmd_broker_config)

    p = sub.add_parser("users", help="accounts in the registry: add users, issue API tokens")
    users = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    u = users.add_parser("add", help="create or update a user (password from a prompt or stdin)")
    u.add_argument("name")
    u.add_argument("--role", required=True, choices=["admin", "facility", "teacher"])
    u.add_argument("--room", action="append", help="SCHOOL:ROOM a teacher may command (repeatable)")
    u.add_argument("--school", action="append",
                   help="limit an admin or facility account to this school (repeatable; none: district-wide)")
    u.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    u.add_argument("--no-password", action="store_true", help="ask for no password: a new account signs "
                   "in with the education platform only (docs/oidc.md); an existing one keeps its password "
                   "(how an admin gives a role to a person the platform signed in without one)")
    u = users.add_parser("token", help="issue an API token for a user (printed once)")
    u.add_argument("name")
    u.add_argument("--label", default="", help="what the token is for")
    for sp in users.choices.values():
        sp.add_argument("--db", default=None, help=f"the central database, {DB_URLS} (default: $CAMPUS_DB)")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("city", help="a city above districts: admit a district and print its push token")
    cities = p.add_subparsers(dest="city_command", required=True, metavar="ACTION")
    c = cities.add_parser("add-district", help="admit district NAME (again: a new token, the old one stops working); "
                          "prints its token once")
    c.add_argument("name")
    c.add_argument("--db", default=None, help=f"the city's central database, {DB_URLS} (default: $CAMPUS_DB)")
    p.set_defaults(func=cmd_city)

    p = sub.add_parser("db", help="the central database's schema: upgrade it to this release (Alembic)")
    dbs = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    dbs.add_parser("upgrade", help="bring the database to this release's schema (run once per release, "
                   "before starting the new programs; SQLite files are upgraded by the programs themselves)")
    dbs.add_parser("status", help="the database's schema and the one this release needs")
    for sp in dbs.choices.values():
        sp.add_argument("--db", default=None, help=f"the central database, {DB_URLS} (default: $CAMPUS_DB)")
    p.set_defaults(func=cmd_db)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _count(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number within [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}")
        return value
    return parse


def _proxies(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of proxies") from None
    if not 0 <= value <= 5:
        raise argparse.ArgumentTypeError("must be 0-5 (the reverse proxies in front of this server)")
    return value


def _seconds(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds within [low, high] (finite: NaN is no duration)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not low <= value <= high:  # False for NaN too
            raise argparse.ArgumentTypeError(f"must be {low:g} to {high:g} seconds")
        return value
    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be 0-65535")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    # `kill -USR1 PID` prints every thread's stack to stderr (the journal under systemd): where a program
    # that seems stuck waits, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        args.func(args)
    except CampusError as exc:
        print(f"campus: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
