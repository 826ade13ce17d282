"""District side of the city link: a thread of `Central` that sends the district's rollup to its city.

`campus web --city-url URL --city-token TOKEN --district NAME` (or CAMPUS_CITY_URL, CAMPUS_CITY_TOKEN,
CAMPUS_DISTRICT) makes a district web instance push, every CAMPUS_CITY_INTERVAL seconds (default 60),
`POST URL/api/city/rollups` with its schools' rollup (central/city.py says what crosses and why HTTP).

- One pusher per district: every web worker and instance runs the thread, the one holding the
  `city-push` lease (Database.take_lease, as the alarm monitor) sends.
- Never in the district's way: its own thread, a bounded request (HTTP_TIMEOUT_S), and when the city
  is away or refuses, a retry after a growing delay (twice the last, from the interval up to
  20 intervals or BACKOFF_MAX_S, with jitter so that districts do not come back in step).
- Nothing lost, nothing twice: each attempt takes the next seq from the district's database
  (`city_push`), so a restart or another instance goes on counting; the city keeps the newest. A city
  holding a higher seq (the district's database started over) answers 409 with it, and the district
  counts on from there at once.
- This week's usage rate and CO2-over-limit seconds are the same `lists.schools` rows carry, read from
  the daily usage rollup (central/usage_rollup.py keeps it), so each push sends them as of now at no
  extra cost. CAMPUS_CITY_USAGE_INTERVAL=0 still leaves them out (sent as null); any other value is
  accepted and no longer matters (it spaced the point-store reads the rollup replaced).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update

from campus import names
from campus.errors import ConfigError
from central import lists
from central.city import MAX_SCHOOLS, CityPush
from central.db import Database
from central.registry import Registry, check_token
from central.timetables import site_zone_of, today_in
from central.workers import LeasedWorker

log = logging.getLogger(__name__)

URL_ENV, TOKEN_ENV, DISTRICT_ENV = "CAMPUS_CITY_URL", "CAMPUS_CITY_TOKEN", "CAMPUS_DISTRICT"
INTERVAL_ENV, USAGE_INTERVAL_ENV = "CAMPUS_CITY_INTERVAL", "CAMPUS_CITY_USAGE_INTERVAL"
DEFAULT_INTERVAL_S = 60.0
DEFAULT_USAGE_INTERVAL_S = 3600.0
HTTP_TIMEOUT_S = 10.0
BACKOFF_MAX_S = 600.0
PATH = "api/city/rollups"


@dataclass(frozen=True)
class CityLink:
    """Where a district sends its rollup and as whom."""
    url: str       # the city's base URL: http(s)://HOST[:PORT][/PREFIX]
    token: str     # what `campus city add-district NAME` printed on the city
    district: str  # NAME: the city refuses a push naming another district

    @classmethod
    def from_options(cls, url: str | None, token: str | None, district: str | None) -> CityLink | None:
        """The link from options, else the environment; None when none is given (not a district of a
        city); ConfigError naming what is missing or wrong when only some are."""
        given = {"--city-url": url or os.environ.get(URL_ENV, ""), "--city-token": token or os.environ.get(TOKEN_ENV, ""),
                 "--district": district or os.environ.get(DISTRICT_ENV, "")}
        if not any(given.values()):
            return None
        missing = [k for k, v in given.items() if not v]
        if missing:
            raise ConfigError(f"{', '.join(missing)} missing: a district pushing to its city needs --city-url, "
                              f"--city-token and --district (or {URL_ENV}, {TOKEN_ENV}, {DISTRICT_ENV})")
        parts = urlsplit(given["--city-url"])
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(f"--city-url {given['--city-url'][:100]!r}: write http(s)://HOST[:PORT][/PATH]")
        check_token(given["--city-token"], "--city-token")
        try:
            names.identifier(given["--district"], "--district")
        except names.BadName as exc:
            raise ConfigError(str(exc)) from None
        return cls(given["--city-url"], given["--city-token"], given["--district"])

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/" + PATH


# ---------------------------------------------------------------- what is sent


def rollup(db: Database, district: str, seq: int, now: float, usage: bool = True,
           site_zone: ZoneInfo | None = None) -> dict[str, Any]:
    """The body of a push: the district's schools as `GET /api/schools` rolls them up (central/lists.py),
    with this week's usage and CO2 figures unless `usage` is false (sent as null), and nothing else. This
    week: of the site's today (`site_zone`; None: Asia/Shanghai), as the district's own pages say it."""
    today = today_in(site_zone_of(site_zone), now)
    page = lists.schools(db, lists.Paging(limit=MAX_SCHOOLS), week_of=today)
    if page.total > MAX_SCHOOLS:
        log.warning("city push: %d schools, the city takes the first %d", page.total, MAX_SCHOOLS)
    schools = []
    for r in page.items:
        schools.append({"school": r.school, "name": r.name, "rooms": r.rooms, "gateways": r.gateways,
                        "online": r.online, "offline": r.offline, "alarms": r.alarms,
                        "alarms_active": r.alarms_active, "alarms_by_kind": r.alarms_by_kind, "faults": r.faults,
                        "lamps_due": r.lamps_due, "filters_due": r.filters_due,
                        "usage_periods": r.usage_periods if usage else None,
                        "usage_used": r.usage_used if usage else None,
                        "co2_over_s": r.co2_over_s if usage else None,
                        "energy_kwh": r.energy_kwh if usage else None})
    return {"district": district, "seq": seq, "generated_at": now, "schools": schools}


def next_seq(db: Database, district: str, at_least: int = 0) -> int:
    """The next sequence number of this district's pushes, counted in its database (a restart, another
    instance, go on from it); `at_least`: count on from there (what the city already holds)."""
    t = CityPush.__table__
    with db.write("cannot count the city pushes") as conn:
        conn.execute(db.insert(t).values(district=district, seq=0).on_conflict_do_nothing())
        conn.execute(update(t).where(t.c.district == district).values(
            seq=func.max(t.c.seq, at_least) + 1 if db.dialect == "sqlite" else func.greatest(t.c.seq, at_least) + 1))
        return int(conn.execute(select(t.c.seq).where(t.c.district == district)).scalar_one())


def pushed(db: Database, district: str, at: float) -> None:
    t = CityPush.__table__
    with db.write("cannot note the city push") as conn:
        conn.execute(update(t).where(t.c.district == district).values(pushed_at=at))


class Refused(Exception):
    """The city answered 4xx: `status`, its `error`, and the seq it holds (a 409)."""

    def __init__(self, status: int, error: str, held: int | None = None) -> None:
        super().__init__(f"the city refused the push: {status} {error}")
        self.status, self.error, self.held = status, error, held


def send(link: CityLink, body: dict[str, Any], timeout: float = HTTP_TIMEOUT_S) -> dict[str, Any]:
    """POST the body; the city's JSON answer. Refused for a 4xx, OSError (URLError) when it cannot be
    reached or answers 5xx."""
    request = urllib.request.Request(link.endpoint, data=json.dumps(body, allow_nan=False).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {link.token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - http(s) only (CityLink)
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise OSError(f"the city answered {exc.code}") from None
        try:
            answer = json.loads(exc.read() or b"{}")
        except ValueError:
            answer = {}
        held = answer.get("seq") if isinstance(answer, dict) and isinstance(answer.get("seq"), int) else None
        raise Refused(exc.code, str(answer.get("error", exc.reason) if isinstance(answer, dict) else exc.reason)[:300],
                      held) from None


# ---------------------------------------------------------------- the thread


class CityPusher(LeasedWorker):
    """Sends the rollup every `interval` seconds from a daemon thread until stop(); see the module."""

    LEASE = "city-push"

    def __init__(self, link: CityLink, registry: Registry, ledger: Any, store: Any, interval: float,
                 usage_interval: float = DEFAULT_USAGE_INTERVAL_S, site_zone: ZoneInfo | None = None) -> None:
        # Renewed at least every interval; outlasts one request, so a slow city does not hand the lease over.
        super().__init__(registry.db, self.LEASE, interval=interval, ttl=3 * interval + HTTP_TIMEOUT_S,
                         name="city-push", what="city push", join_s=HTTP_TIMEOUT_S + 5, release=store.release)
        self.link, self.registry, self.ledger, self.store = link, registry, ledger, store
        self.usage_interval = usage_interval
        self.site_zone = site_zone
        self.pushes = 0      # accepted by the city (stored or a replay)
        self.failures = 0    # in a row: the backoff's exponent
        self._due = 0.0      # monotonic time of the next attempt

    @property
    def backoff_max(self) -> float:
        return max(self.interval, min(BACKOFF_MAX_S, 20 * self.interval))

    def start(self) -> Self:
        log.info("city push: district %s -> %s every %g s", self.link.district, self.link.endpoint, self.interval)
        return super().start()

    def round(self) -> float:
        """The lease is renewed every interval; a push is made when due (the backoff may put it later)."""
        if time.monotonic() >= self._due:
            self._due = time.monotonic() + self._attempt()
        return min(self.interval, self._due - time.monotonic())

    def _attempt(self) -> float:
        """One push (two when the city holds a higher seq); the seconds until the next one."""
        db, district = self.registry.db, self.link.district
        at_least = 0
        for _ in range(2):
            now = time.time()
            body = rollup(db, district, next_seq(db, district, at_least), now, self.usage_interval > 0,
                          self.site_zone)
            try:
                answer = send(self.link, body)
            except Refused as exc:
                if exc.status == 409 and exc.held is not None:
                    log.info("city push: the city holds seq %d of %s; counting on from it", exc.held, district)
                    at_least = exc.held
                    continue
                return self._failed(str(exc))
            except OSError as exc:
                return self._failed(f"{self.link.endpoint}: {getattr(exc, 'reason', exc)}")
            pushed(db, district, now)
            if self.failures:
                log.info("city push: %s reached again after %d failed attempt(s)", self.link.endpoint, self.failures)
            self.failures = 0
            self.pushes += 1
            log.debug("city push: seq %s %s", body["seq"], "stored" if answer.get("stored") else "already held")
            return self.interval
        return self._failed("the city refused the seq twice")

    def _failed(self, why: str) -> float:
        self.failures += 1
        delay = min(self.backoff_max, self.interval * 2 ** (self.failures - 1)) * random.uniform(0.8, 1.0)
        log.warning("city push: %s; attempt %d, next in %.1f s", why, self.failures, delay)
        return delay
