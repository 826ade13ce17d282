"""`campus demo`: a whole simulated school on one machine, in one process.

An embedded broker (amqtt, unless --mqtt names a real one), N classrooms
each with simulated devices and an edge agent (the same code as `campus
sim` and `campus agent`, over real sockets), ingest into the store, and the
dashboard. The gateway configs it generates are written to the data dir so
a user can copy one for a real gateway.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from campus.aio import wait_event
from campus.errors import CampusError
from campus.net import free_port
from campus.signals import run_until_signal
from campus.urls import parse_mqtt_url, redacted
from central.broker_config import atomic_write
from central.registry import Registry
from device_profiles.config import GatewayConfig, load_gateway_config
from edge_agent.agent import run_agent
from firmware_stubs.runner import SimulatorSet
from programs.demo_roster import DemoRoster, RoomRoster, demo_roster
from protocols.card_ids import card_uid

log = logging.getLogger(__name__)

SCHOOL = "demo-school"
DEMO_PERIOD_MIN = 10  # a demo's class periods: short, so the usage rate counts some within minutes
DEMO_USAGE_REFRESH_S = 60.0


def school_id(school: int, schools: int) -> str:
    """The demo's school `school` (1-based) of `schools`: one school keeps the plain name."""
    return SCHOOL if schools == 1 else f"{SCHOOL}-{school}"


@dataclass(frozen=True)
class SchoolPeople:
    """What a demo school's gateways need for its class register: the school's card secret (central's, so a
    roster card's pseudonym on the gateway is the one central made at import), its roster, and its class
    periods (`[[weekday, "HH:MM", "HH:MM"], ...]` in `timezone`) during which the card readers swipe."""

    card_secret: str
    roster: DemoRoster
    class_periods: list[list[Any]]
    timezone: str


def place_prefix(school: int, schools: int) -> str:
    """What goes before a room's number in the names of its gateway and files: "" for one school, "2-" for
    school 2 of several."""
    return "" if schools == 1 else f"{school}-"


def classroom_config(index: int, mqtt: str, data_dir: Path, poll_interval: float = 2.0, *,
                     school: int = 1, schools: int = 1, people: SchoolPeople | None = None) -> dict[str, Any]:
    """The gateway config of demo classroom `index` (1-based) of school `school` of `schools`: one device
    of every kind (the meter: `meter_device`). Rooms are numbered 101, 102, ... in every school; gateways are gw-101 for one school,
    gw-2-101 (school 2, room 101) for several.

    Network devices listen on free loopback ports; serial devices are ptys
    symlinked under DIR/dev/ (the agent opens them as it would /dev/ttyUSB0);
    the camera reads a generated classroom video under DIR/video/. With the
    school's `people`, the gateway has the school's card secret, the card
    reader swipes the room's class in its periods and the camera shows a
    pupil's roster QR code; without, a secret of its own and cards and a
    code from nowhere.
    """
    room = f"{100 + index}"
    place = f"{place_prefix(school, schools)}{room}"  # names a room's gateway and files: ptys, video
    gateway = f"gw-{place}"
    dev_dir = (data_dir / "dev").resolve()
    video = (data_dir / "video" / f"room-{place}.avi").resolve()
    cls = people.roster.rooms.get(room) if people else None
    cards: dict[str, Any] = {"seed": index, "swipe_every_s": 15}
    if people and cls:
        cards.update(roster=[card_uid(number) for number in cls.cards], class_periods=people.class_periods,
                     timezone=people.timezone)
    return {
        "school": school_id(school, schools), "gateway": gateway, "room": room, "building": "A",
        "mqtt": mqtt, "poll_interval": poll_interval,
        "data_dir": str((data_dir / "agents" / gateway).resolve()),
        "card_secret": people.card_secret if people else secrets.token_hex(16),
        "devices": [
            {"id": "env", "profile": "env-6in1-modbus",
             "address": {"host": "127.0.0.1", "port": free_port(), "unit": 1},
             "simulator": {"seed": index, "time_scale": 30, "start": "07:58"}},
            {"id": "projector", "profile": "projector-pjlink2",
             "address": {"host": "127.0.0.1", "port": free_port()},
             # A real lamp projector warms up for ~30 s; the demo is impatient.
             "simulator": {"seed": index, "warmup_s": 8, "cooldown_s": 6, "lamp_hours": 1200 + 350 * index,
                           "time_scale": 60,
                           # Every other room's lesson uses its projector: the usage rate has both kinds.
                           **({"power": "on"} if index % 2 == 0 else {})}},
            {"id": "display", "profile": "display-samsung-mdc",
             "address": {"serial": str(dev_dir / f"room-{place}-display"), "display_id": 0},
             "simulator": {"seed": index}},
            {"id": "cards", "profile": "card-em4100",
             "address": {"serial": str(dev_dir / f"room-{place}-cards")},
             "simulator": cards},
            {"id": "camera", "profile": "camera-occupancy",
             "address": {"source": str(video)}, "options": {"loop": True},
             "simulator": {"people": 2 + index % 5, "qr_text": _shown_code(cls, index) or f"STU-{room}-0001",
                           "seed": index}},
            meter_device(index, dev_dir / f"room-{place}-meter"),
        ],
    }


def _shown_code(cls: RoomRoster | None, index: int) -> str | None:
    """The roster QR code a pupil of the room's class holds up to its camera (one per room: the video loops)."""
    return cls.qr_codes[index % len(cls.qr_codes)] if cls and cls.qr_codes else None


def meter_device(index: int, pty: Path) -> dict[str, Any]:
    """Room `index`'s electricity meter, so the energy figures have data from the first minute: the national
    standard DL/T 645 meter on RS-485 (a pty at `pty`) in odd rooms, an Eastron SDM120 on Modbus TCP in even
    ones. The simulated day runs 30 times faster, as the air sensor's does, from the same 07:58."""
    simulator = {"seed": index, "time_scale": 30, "start": "07:58", "energy_kwh": round(1500 + 211.7 * index, 2)}
    if index % 2:
        # parity N: a pty refuses the meters' even parity (tests/test_dlt645.py); the address overrides the profile
        return {"id": "meter", "profile": "meter-dlt645", "simulator": simulator,
                "address": {"serial": str(pty), "meter_address": f"{202600000000 + index:012d}", "parity": "N"}}
    return {"id": "meter", "profile": "meter-sdm120-modbus", "simulator": simulator,
            "address": {"host": "127.0.0.1", "port": free_port(), "unit": 1}}


def demo_timetable(school: str, now: float | None = None, minutes: int = DEMO_PERIOD_MIN) -> Any:
    """A timetable for the demo: every day of the week, periods of `minutes` with `minutes // 2` between them,
    from the five minutes before `now` (the school's local time) to midnight, at most MAX_PERIODS_PER_DAY.
    A real school's starts at 08:00; a demo started in the evening would show no period for hours."""
    from datetime import datetime
    from datetime import time as dtime
    from zoneinfo import ZoneInfo

    from central import timetables as tts

    local = datetime.fromtimestamp(time.time() if now is None else now, ZoneInfo(tts.DEFAULT_TIMEZONE))
    start = max(0, (local.hour * 60 + local.minute) // 5 * 5 - 5)
    if start + minutes >= 24 * 60:
        start = 0  # started just before midnight: the periods are tomorrow's
    periods = []
    for number in range(1, tts.MAX_PERIODS_PER_DAY + 1):
        end = start + minutes
        if end >= 24 * 60:
            break
        for weekday in range(1, 8):
            periods.append(tts.Period(weekday, number, dtime(start // 60, start % 60), dtime(end // 60, end % 60),
                                      f"demo {number}"))
        start = end + minutes // 2
    return tts.Timetable(school, tts.DEFAULT_TIMEZONE, tuple(periods))


class Demo:
    def __init__(self, rooms: int = 3, http_port: int = 8080, data_dir: str = "campus-demo-data",
                 mqtt: str | None = None, store: str | None = None, admin_token: str | None = None,
                 db: str | None = None, schools: int = 1) -> None:
        self.rooms = rooms  # per school
        self.schools = schools
        self.http_port = http_port
        self.data_dir = Path(data_dir).resolve()
        self.external_mqtt = mqtt
        if mqtt:
            parse_mqtt_url(mqtt)
        self.store = store or f"sqlite:///{self.data_dir / 'campus.db'}"
        # The central database: --db (or CAMPUS_DB), else the SQLite store's file, else one of its own.
        from central.db import central_db_url

        fallback = self.store if self.store.startswith("sqlite:") else f"sqlite:///{self.data_dir / 'ledger.db'}"
        self.db = central_db_url(db, fallback)
        if admin_token is not None:
            from central.registry import check_token

            check_token(admin_token, "--admin-token")
        self.admin_token = admin_token or secrets.token_urlsafe(18)
        self.passwords = {role: secrets.token_urlsafe(9) for role in ("admin", "facility", "teacher")}

    def _write_configs(self, mqtt: str, people: dict[str, SchoolPeople]) -> list[GatewayConfig]:
        gw_dir = self.data_dir / "gateways"
        gw_dir.mkdir(parents=True, exist_ok=True)
        configs = []
        for k in range(1, self.schools + 1):
            for i in range(1, self.rooms + 1):
                config = classroom_config(i, mqtt, self.data_dir, school=k, schools=self.schools,
                                          people=people.get(school_id(k, self.schools)))
                path = gw_dir / f"room-{config['gateway'].removeprefix('gw-')}.yaml"
                # 0600 from creation: a gateway config holds the school's card secret (and a broker password).
                atomic_write(path, yaml.safe_dump(config, sort_keys=False), mode=0o600)
                configs.append(load_gateway_config(path))
        return configs

    def _size(self) -> str:
        rooms = f"{self.rooms} classroom{'s' if self.rooms != 1 else ''}"
        return rooms if self.schools == 1 else f"{self.schools} schools of {rooms} each"

    def _register(self, registry: Registry, configs: list[GatewayConfig]) -> None:
        """Put the demo school into the registry as IT staff would: rooms, gateways, devices, people."""
        for cfg in configs:
            if registry.gateway_info(cfg.gateway) is None:
                registry.register_gateway(cfg.gateway, cfg.school, cfg.room, cfg.building)
            for dev in cfg.devices:
                registry.add_device(cfg.gateway, dev.id, dev.profile, dev.address, dev.options)
        registry.add_user("admin", self.passwords["admin"], "admin")
        registry.add_user("facility", self.passwords["facility"], "facility")
        registry.add_user("teacher", self.passwords["teacher"], "teacher",
                          rooms=[(configs[0].school, configs[0].room)] if configs else [])
        registry.ensure_admin(self.admin_token)

    def _timetables(self, registry: Registry, schools: list[str]) -> None:
        """Give each demo school without one a timetable (作息时间表) whose periods start now, so that the usage
        rate has periods over within minutes (see `demo_timetable`)."""
        from central import timetables as tts

        for school in schools:
            if tts.load(registry, school) is None:
                tts.save(registry, demo_timetable(school), "campus demo")

    def _people(self, registry: Registry) -> dict[str, SchoolPeople]:
        """Each demo school in the registry (its rooms made now: the secret and the timetable hang off the
        school) with its timetable, card secret and synthetic roster, written to DIR/rosters/ as the CSV
        a school would import."""
        from central import timetables as tts

        people: dict[str, SchoolPeople] = {}
        for k in range(1, self.schools + 1):
            school = school_id(k, self.schools)
            for i in range(1, self.rooms + 1):
                registry.ensure_room(school, f"{100 + i}", "A")
        self._timetables(registry, [school_id(k, self.schools) for k in range(1, self.schools + 1)])
        for k in range(1, self.schools + 1):
            school = school_id(k, self.schools)
            roster = demo_roster(school, self.rooms, place_prefix=place_prefix(k, self.schools))
            # 0600 from creation like the gateway configs: card numbers, even made-up ones, open podiums.
            (self.data_dir / "rosters").mkdir(parents=True, exist_ok=True)
            atomic_write(self.data_dir / "rosters" / f"roster-{school}.csv", roster.csv, mode=0o600)
            timetable = tts.load(registry, school)
            periods = [[p.weekday, p.start.strftime("%H:%M"), p.end.strftime("%H:%M")]
                       for p in (timetable.periods if timetable else ())]
            people[school] = SchoolPeople(registry.card_secret(school), roster, periods,
                                          timetable.timezone if timetable else tts.DEFAULT_TIMEZONE)
        return people

    def _import_rosters(self, registry: Registry, people: dict[str, SchoolPeople]) -> None:
        """Import each school's roster into central, as a school's office would (its cards and codes become
        pseudonyms there). central.attendance (rosters and the class register) is built on another branch of
        issue 22: until both are merged it is absent and the roster is only written to DIR/rosters/."""
        if importlib.util.find_spec("central.attendance") is None:
            return
        from central import attendance

        for school, who in people.items():
            result = attendance.import_roster(registry, school, who.roster.csv.encode("utf-8"), by="campus demo")
            if getattr(result, "errors", None):
                log.warning("the demo roster of %s was refused: %s", school, result.errors[:3])

    def _sim_control(self, sims: dict[str, SimulatorSet]) -> Any:
        def control(gateway: str, device: str, overrides: dict[str, Any]) -> None:
            sim = sims[gateway].by_device[device]
            server, unit = sim if isinstance(sim, tuple) else (sim, None)
            if unit is None:
                raise KeyError(f"{gateway}/{device} (only environment sensors take overrides)")
            air = server.units[unit]
            for metric, value in overrides.items():
                if value is None:
                    air.overrides.pop(metric, None)
                else:
                    air.overrides[metric] = float(value)
        return control

    def run(self, duration: float | None = None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run_until_signal(lambda stop: self._main(stop, duration))

    async def _main(self, stop: asyncio.Event, duration: float | None) -> None:
        from central.service import Central
        from dashboards import WebConfig
        from programs.services import start_ingest, start_web

        started = time.monotonic()
        broker_port = None
        if self.external_mqtt:
            mqtt = self.external_mqtt
        else:
            broker_port = free_port()
            mqtt = f"mqtt://127.0.0.1:{broker_port}?protocol=3.1.1"  # amqtt speaks MQTT 3.1.1 only
        web = WebConfig(store_url=self.store, db_url=self.db, mqtt_url=mqtt)
        # One Central for the demo's ingest and its dashboard; a --store that cannot be reached is one line,
        # before anything starts.
        config = web.central_config()
        config.upgrade = True  # the demo's own database, even on a server: made or upgraded now
        config.usage_interval = DEMO_USAGE_REFRESH_S  # today's usage rollup: a demo's periods are minutes long
        central = await asyncio.to_thread(Central.open, config, check_store=True)
        broker = None
        try:
            if broker_port is not None:
                from amqtt.broker import Broker

                broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{broker_port}"}},
                                 "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                                             {"allow_anonymous": True}}})
                await broker.start()
        except BaseException:
            central.close()
            raise
        people = await asyncio.to_thread(self._people, central.registry)
        configs = self._write_configs(mqtt, people)
        sims = {c.gateway: SimulatorSet(c) for c in configs}
        for s in sims.values():
            await s.start()

        ingest = await asyncio.to_thread(start_ingest, central, mqtt, name="demo-ingest")
        self._register(central.registry, configs)
        await asyncio.to_thread(self._import_rosters, central.registry, people)
        web.sim_control = self._sim_control(sims)
        # The dashboard, with central's commands, alarm monitor and scheduler.
        served = await asyncio.to_thread(start_web, central, web, "127.0.0.1", self.http_port)
        url = served.url
        print(f"campus demo: {self._size()}, broker {redacted(mqtt.split('?')[0])}"
              f"{' (embedded amqtt)' if broker else ''}, store {redacted(self.store)}, central database "
              f"{central.db.name}", flush=True)
        print(f"campus demo: dashboard {url}", flush=True)
        for role, password in self.passwords.items():
            print(f"campus demo: login {role} / {password}", flush=True)
        print(f"campus demo: admin API token {self.admin_token}", flush=True)
        print(f"campus demo: gateway configs in {self.data_dir / 'gateways'}, synthetic class rosters in "
              f"{self.data_dir / 'rosters'}", flush=True)
        # Passwords and the token: readable by the user who ran the demo only, from the file's creation on.
        atomic_write(self.data_dir / "logins.txt", "".join(f"{r} {p}\n" for r, p in self.passwords.items())
                     + f"token {self.admin_token}\nurl {url}\n", mode=0o600)

        agents = [asyncio.create_task(run_agent(c, stop)) for c in configs]
        try:
            if duration is not None:
                await wait_event(stop, duration - (time.monotonic() - started))
            else:
                await stop.wait()
        finally:
            print("campus demo: stopping", flush=True)
            stop.set()
            await asyncio.gather(*agents, return_exceptions=True)
            await asyncio.to_thread(ingest.stop)
            served.stop()
            await asyncio.to_thread(central.close)  # its threads stop, then the store and the database close
            for s in sims.values():
                await s.stop()
            if broker is not None:
                await broker.shutdown()
        for task in agents:
            if task.done() and not task.cancelled() and task.exception():
                raise CampusError(f"an agent failed: {task.exception()}")
