"""Modbus (TCP, and RTU on RS-485): environment sensors' holding and input registers.

The frames themselves are pymodbus's (client in the driver, server in the simulator). What is ours,
and shared by both so they can never disagree: how a profile's metric is encoded in registers
(type, word order, scale and offset), how a poll groups metrics into as few reads as the protocol
allows, the names of the exception codes, and the device address (a TCP endpoint or a serial port,
plus the unit id).
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING

from campus.errors import DeviceError
from campus.i18n import N_, LazyText, lazy_gettext
from protocols import serial_line
from protocols.spec import Address, Field, Protocol

if TYPE_CHECKING:
    from device_profiles import Metric

NAME = "modbus"
DEFAULT_PORT = 502
DEFAULT_UNIT = 1
# Marked for translation: a device's fault reason names them (exception_meaning).
EXCEPTION_NAMES = {1: N_("illegal function"), 2: N_("illegal data address"), 3: N_("illegal data value"),
                   4: N_("device failure"), 6: N_("device busy"), 10: N_("gateway path unavailable"),
                   11: N_("gateway target failed to respond")}


def exception_meaning(code: int) -> LazyText:
    """What a Modbus exception code means, marked for translation."""
    return LazyText(EXCEPTION_NAMES.get(code, N_("unknown")))
MAX_REGISTERS_PER_READ = 125  # Modbus limit for function 0x03/0x04

ADDRESS = Address(
    fields=(
        Field("host", "text", label="the sensor's (or Modbus TCP gateway's) host name or IP address",
              hint=N_("sensor IP for Modbus TCP, e.g. 10.1.2.30")),
        Field("port", "int", minimum=1, maximum=65535, must="1-65535", default=DEFAULT_PORT),
        Field("unit", "int", minimum=0, maximum=247, must="a Modbus address 0-247", default=DEFAULT_UNIT,
              hint=N_("Modbus unit id, usually 1")),
        Field("serial", "text", label="the path of the RS-485 port (e.g. /dev/ttyUSB0)",
              hint=N_("or an RS-485 port for Modbus RTU, e.g. /dev/ttyUSB0")),
        *(Field(f.name, f.type, minimum=f.minimum, choices=f.choices, hint=N_("RTU only, e.g. 9600"),
                form=f.name == "baudrate") for f in serial_line.LINE),
    ),
    choose=(("host", "Modbus TCP"), ("serial", "Modbus RTU port")),
)

PROTOCOL = Protocol(
    name=NAME, label="Modbus TCP / RTU", address=ADDRESS,
    driver="edge_agent.drivers.modbus:ModbusDriver",
    simulator="firmware_stubs.environment:simulators_for", shared_link=True,
    # Every metric of a Modbus profile says where it is.
    profile_schema={"properties": {"metrics": {"minProperties": 1,
                                               "additionalProperties": {"required": ["register", "type"]}}}},
)


def link_key(address: dict) -> tuple[str, ...]:
    """Which link a device is on: devices with the same key share one client (and one simulated server)."""
    if "host" in address:
        return ("tcp", str(address["host"]), str(address.get("port", DEFAULT_PORT)))
    return ("rtu", str(address["serial"]))


def read_plan(metrics: list[Metric]) -> list[tuple[str, int, int, list[Metric]]]:
    """Group metrics into (function, start, count, metrics) contiguous reads of at most 125 registers."""
    out: list[tuple[str, int, int, list[Metric]]] = []
    for m in sorted(metrics, key=lambda m: (m.function, m.register)):
        assert m.register is not None
        end = m.register + m.register_count
        if out and out[-1][0] == m.function and m.register <= out[-1][1] + out[-1][2] \
                and end - out[-1][1] <= MAX_REGISTERS_PER_READ:
            fn, start, count, ms = out[-1]
            out[-1] = (fn, start, max(count, end - start), ms + [m])
        else:
            out.append((m.function, m.register, m.register_count, [m]))
    return out


def decode(metric: Metric, registers: list[int]) -> float:
    """Engineering value of `metric` from its raw registers."""
    if len(registers) != metric.register_count:
        raise DeviceError(lazy_gettext("%(metric)s: expected %(n)s registers, got %(got)s", metric=metric.name,
                                       n=metric.register_count, got=len(registers)))
    if any(not 0 <= r <= 0xFFFF for r in registers):
        raise DeviceError(lazy_gettext("%(metric)s: register value out of 16-bit range: %(registers)s",
                                       metric=metric.name, registers=str(registers)[:100]))
    words = registers if metric.word_order == "big" else list(reversed(registers))
    raw_bytes = b"".join(w.to_bytes(2, "big") for w in words)
    fmt = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}[metric.type]
    raw = struct.unpack(fmt, raw_bytes)[0]
    if isinstance(raw, float) and not math.isfinite(raw):
        raise DeviceError(lazy_gettext("%(metric)s: register holds a non-finite float", metric=metric.name))
    value = raw * metric.scale + metric.offset
    # Round away float noise from scaling (e.g. 231 * 0.1) to the register's resolution.
    digits = max(0, -math.floor(math.log10(metric.scale))) if metric.scale < 1 else 0
    return round(value, digits + 2) if metric.type == "float32" else round(value, digits)


def encode(metric: Metric, value: float) -> list[int]:
    """Raw registers that a device would hold for the engineering `value`."""
    raw = (value - metric.offset) / metric.scale
    if metric.type == "float32":
        data = struct.pack(">f", raw)
    else:
        fmt, lo, hi = {"int16": (">h", -0x8000, 0x7FFF), "uint16": (">H", 0, 0xFFFF),
                       "int32": (">i", -0x80000000, 0x7FFFFFFF), "uint32": (">I", 0, 0xFFFFFFFF)}[metric.type]
        data = struct.pack(fmt, max(lo, min(hi, round(raw))))
    words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
    return words if metric.word_order == "big" else list(reversed(words))
