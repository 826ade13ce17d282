"""Modbus register encoding and decoding with a profile's scaling.

The Modbus driver decodes with it and the Modbus simulator encodes with it,
so the two can never disagree on word order or sign.
"""

from __future__ import annotations

import math
import struct

from campus.errors import DeviceError
from device_profiles import Metric


def decode(metric: Metric, registers: list[int]) -> float:
    """Engineering value of `metric` from its raw registers."""
    if len(registers) != metric.register_count:
        raise DeviceError(f"{metric.name}: expected {metric.register_count} registers, got {len(registers)}")
    if any(not 0 <= r <= 0xFFFF for r in registers):
        raise DeviceError(f"{metric.name}: register value out of 16-bit range: {registers}")
    words = registers if metric.word_order == "big" else list(reversed(registers))
    raw_bytes = b"".join(w.to_bytes(2, "big") for w in words)
    fmt = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}[metric.type]
    raw = struct.unpack(fmt, raw_bytes)[0]
    if isinstance(raw, float) and not math.isfinite(raw):
        raise DeviceError(f"{metric.name}: register holds a non-finite float")
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
