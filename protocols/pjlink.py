"""PJLink (JBMIA, TCP 4352), class 1 and class 2: classroom projectors of every brand.

The codec both ends share: the port, the line limit, the authentication digest, the meaning of the
power, error-status and AV-mute answers, the error codes, and which input codes each class allows.
The connection handling is the driver's (edge_agent/drivers/pjlink.py), the projector's side the
simulator's (firmware_stubs/pjlink.py).
"""

from __future__ import annotations

import hashlib
import re

from campus.i18n import N_
from protocols.spec import Address, Field, Protocol

NAME = "pjlink"
PJLINK_PORT = 4352
MAX_LINE = 136  # bytes per line, terminator included (PJLink class 1 and 2)
POWER = {"0": "off", "1": "on", "2": "cooling", "3": "warming"}
ERST_METRICS = ("error_fan", "error_lamp", "error_temperature", "error_cover", "error_filter", "error_other")
ERST_LEVELS = {"0": "ok", "1": "warning", "2": "error"}
ERRORS = {"ERR1": "undefined command", "ERR2": "parameter out of range",
          "ERR3": "unavailable at this time", "ERR4": "projector failure"}
AV_MUTE = {"10", "11", "20", "21", "30", "31"}
CLASS1_INPUT = re.compile(r"[1-5][1-9]")
CLASS2_INPUT = re.compile(r"[1-6][1-9A-Z]")

ADDRESS = Address(fields=(
    Field("host", "text", required=True, label="the projector's host name or IP address",
          hint=N_("projector IP, e.g. 10.1.2.31")),
    Field("port", "int", minimum=1, maximum=65535, must="1-65535", default=PJLINK_PORT),
    Field("password", "text", max_chars=32, printable=True, secret=True,
          must="text of 1-32 printable characters (PJLink limit)", hint=N_("PJLink password, if one is set")),
))

PROTOCOL = Protocol(name=NAME, label="PJLink projector (TCP)", address=ADDRESS,
                    driver="edge_agent.drivers.pjlink:PJLinkDriver", simulator="firmware_stubs.pjlink:simulator_for")


def auth_digest(token: str, password: str) -> str:
    """The PJLink authentication prefix: lowercase hex MD5 of the greeting's random token + password."""
    return hashlib.md5((token + password).encode("utf-8")).hexdigest()
