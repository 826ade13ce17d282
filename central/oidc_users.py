"""The accounts of people who sign in with the education platform (OpenID Connect, docs/oidc.md).

The web app (dashboards/oidc.py) checks the provider's answer and reads the claims; this module decides
which account they are, in one transaction of the registry:

1. the account bound to this provider's (issuer, subject): the same person, whatever the platform now
   calls them;
2. else the account whose name is the configured claim's value (`sub` by default; a staff number, say),
   if it is bound to no one yet: an account IT made before the district turned sign-in on is bound to
   its person at their first sign-in. Never `admin`, the break-glass account (made by `campus web` at
   its first start, or still to be made): a platform account that happened to be called so must not
   take it over;
3. else a new account of that name without a password, bound to the person.

Role, rooms and schools follow the claims whenever the platform sends them (the platform is where a
teacher's classes change), and stay as an admin set them when it does not. A new account the claims
give no role gets `NO_ROLE`: it exists (so an admin can see the name and give it one with
`campus users add NAME --role R --no-password`), but it has no access.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from campus.errors import CampusError
from campus.i18n import lazy_gettext
from central.registry import ROLES, Registry, Room, School, User

log = logging.getLogger(__name__)

NO_ROLE = ""
BREAK_GLASS = "admin"  # the account `campus web` makes on a first start (services.ensure_first_admin)


class IdentityRefused(CampusError):
    """The platform's person cannot be given this account (it is bound to another person, or it is the
    break-glass admin)."""


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in, and what the claims say they may do. None: the claims do not say
    (the account keeps what an admin gave it)."""
    issuer: str
    subject: str
    username: str
    role: str | None = None
    rooms: tuple[tuple[str, str], ...] | None = None  # (school, room name)
    schools: tuple[str, ...] | None = None


def sign_in(registry: Registry, who: Identity) -> dict[str, Any]:
    """The account of `who`, found, bound or made, with the claims' role, rooms and schools applied; its
    principal (`role` NO_ROLE: no access yet). Rooms and schools the registry does not know are left out
    and logged: a class the platform knows before IT registered its room is not a reason to refuse the
    teacher their other rooms. IdentityRefused: see the module's rules."""
    if who.role is not None and who.role not in ROLES:
        raise ValueError(f"role {who.role!r}")  # the claim mapping only yields ROLES
    try:
        username = _apply(registry, who)
    except IntegrityError:  # the same person's first sign-in in two tabs at once: the other made the account
        username = _apply(registry, who)
    principal = registry.principal(username)
    assert principal is not None  # committed just now; accounts are never deleted
    return principal


def _apply(registry: Registry, who: Identity) -> str:
    """One transaction of `sign_in`; the account's name."""
    with registry.session() as s:
        user = s.scalar(select(User).where(User.oidc_issuer == who.issuer, User.oidc_subject == who.subject))
        if user is None:
            user = s.scalar(select(User).where(User.username == who.username))
            if who.username == BREAK_GLASS:  # made or not yet: the name is the local break-glass account's
                raise IdentityRefused(lazy_gettext("the account %(user)r is the local break-glass account; it "
                                                   "cannot be signed in to with the platform", user=BREAK_GLASS))
            if user is not None and user.oidc_subject is not None:
                raise IdentityRefused(lazy_gettext("the account %(user)r belongs to another person of the platform",
                                                   user=who.username))
            if user is None:
                user = User(username=who.username, password_hash="", role=NO_ROLE)
                log.info("sign-in: new account %s for %s at %s", who.username, who.subject, who.issuer)
            user.oidc_issuer, user.oidc_subject = who.issuer, who.subject
        if who.role is not None:
            user.role = who.role
        if who.rooms is not None:
            user.rooms = _known_rooms(s, who)
        if who.schools is not None:
            known = list(s.scalars(select(School).where(School.id.in_(who.schools))).all())
            _log_unknown(who, "schools", set(who.schools) - {x.id for x in known})
            # A teacher is scoped by rooms; schools limit staff accounts only (as Registry.add_user says).
            user.schools = sorted(known, key=lambda x: x.id) if user.role != "teacher" else []
        s.add(user)
        return user.username


def _known_rooms(s: Any, who: Identity) -> list[Room]:
    rooms = []
    for school, name in who.rooms or ():
        room = s.scalar(select(Room).where(Room.school_id == school, Room.name == name))
        if room is None:
            _log_unknown(who, "rooms", {f"{school}:{name}"})
        elif room not in rooms:
            rooms.append(room)
    return rooms


def _log_unknown(who: Identity, what: str, unknown: set[str]) -> None:
    if unknown:
        log.warning("sign-in of %s: the platform names %s the registry does not have: %s", who.username, what,
                    ", ".join(sorted(unknown)))
