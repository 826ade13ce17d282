"""The one small async interface every device driver implements.

A driver owns one device's connection (`open`/`close`, also as `async
with`), returns what the device reports (`read`), and carries out actions
(`execute`). The scheduler and the command executor only ever see this
interface, like httpx's transports: protocols differ, the contract does not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from campus import contract
from campus.contract import MetricValue
from campus.errors import ActionRejected, ConfigError, DeviceError
from campus.i18n import LazyText, lazy_gettext
from device_profiles import Profile, check_action
from protocols import protocol


def action_word(action: str) -> LazyText:
    """An action as a person reads it ("power on"), marked for translation: a device's refusal names it."""
    return LazyText(contract.ACTION_WORDS.get(action, action))


class DeviceUnreachable(DeviceError):
    """The device could not be reached at all (status `offline`, not `fault`)."""


class CardSecretMissing(DeviceError, ConfigError):
    """A card reader, or a camera reading QR check-ins, cannot run without the gateway's card_secret (a config
    error, reported as a device fault): it would have to send what it reads raw, or hash with an empty key."""


def card_secret_option(options: dict[str, Any]) -> bytes | None:
    """The school's card secret the agent put in a driver's `secret` option (agent.py), or None if unset."""
    secret = options.get("secret")
    if isinstance(secret, str | bytes) and secret.strip():
        return secret.encode("utf-8") if isinstance(secret, str) else secret
    return None


@dataclass
class DeviceEvent:
    type: str
    data: dict[str, Any]
    ts: float | None = None


@dataclass
class Reading:
    values: dict[str, MetricValue] = field(default_factory=dict)
    events: list[DeviceEvent] = field(default_factory=list)


class Driver(ABC):
    """Base of all drivers. Subclasses set `protocol` and implement the hooks."""

    protocol: ClassVar[str]

    def __init__(self, device_id: str, profile: Profile, address: dict[str, Any],
                 options: dict[str, Any] | None = None) -> None:
        self.device_id = device_id
        self.profile = profile
        self.address = address
        self.options = options or {}
        self.counters: dict[str, int] = {}

    @classmethod
    def check_address(cls, address: dict[str, Any]) -> None:
        """Raise ValueError naming the address field that is wrong: the protocol's declared address
        (protocols/), the same check the gateway config makes when it is loaded."""
        protocol(cls.protocol).address.check(address)

    def count(self, name: str, n: int = 1) -> None:
        """Count a thing worth reporting (dropped frames, retries)."""
        self.counters[name] = self.counters.get(name, 0) + n

    async def open(self) -> None:  # noqa: B027 - many drivers connect lazily
        """Acquire the connection; may be called again after a failure."""

    async def close(self) -> None:  # noqa: B027
        """Release the connection; safe to call twice."""

    @abstractmethod
    async def read(self) -> Reading:
        """One poll: current values and any events since the last poll."""

    async def execute(self, action: str, params: dict[str, Any]) -> str | LazyText:
        """Carry out an action the profile lists; returns a short detail.

        The detail, and the message of an ActionRejected or DeviceError raised, are what a teacher reads on the
        panel: marked for translation (`lazy_gettext` with named parameters), so the result carries the msgid
        and params beside the English (campus/contract.py `text_fields`) and central shows it in the reader's
        language."""
        self.validate_action(action, params)
        return await self._execute(action, params)

    async def _execute(self, action: str, params: dict[str, Any]) -> str | LazyText:
        raise ActionRejected(lazy_gettext("%(profile)s has no actions", profile=self.profile.name))

    def validate_action(self, action: str, params: dict[str, Any]) -> None:
        """Reject an action the profile does not list, or bad parameters (the check the API made
        before the command was stored, made again here: a command may come from anywhere on MQTT)."""
        check_action(action, params, self.profile)

    async def __aenter__(self) -> Driver:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
