"""One exception tree for the whole project.

Every error a user can cause (a bad config, a malformed payload, a device
that answers nonsense, a store that is unreachable) is a `CampusError`, so
the command line can print one line for it instead of a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from campus.i18n import LazyText


class CampusError(Exception):
    """Base of every error this project raises on purpose.

    Raised with one argument, a `campus.i18n.lazy_gettext` LazyText where people see the message: str() of
    the error is English (logs, the CLI), and the web app shows it translated (`campus.i18n.message_of`)."""


class ConfigError(CampusError):
    """A config file, profile, URL or command-line value is invalid."""


class ProfileError(ConfigError):
    """A device profile does not match the profile schema."""


class PayloadError(CampusError):
    """An MQTT payload or topic does not match the contract."""


class DeviceError(CampusError):
    """A device did not answer, answered an error, or sent a corrupt frame."""


class ActionRejected(DeviceError):
    """The device (or its profile) refuses this action or its parameters.

    `field` names the part of the command that is wrong (`action`, `params.level`, ...) when it is
    known, so the API can point at it."""

    def __init__(self, message: str | LazyText, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class StoreError(CampusError):
    """The time-series store or registry could not be read or written."""
