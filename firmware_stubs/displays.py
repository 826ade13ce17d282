"""Simulated classroom displays on RS-232: a Samsung MDC panel and an LG panel, each on a pty.

The drivers are tested, and `campus sim` runs, against these instead of a
display on a desk. Each simulator owns the device end of a pseudo-terminal
(`PtyPort`), parses the real frames a controller writes, keeps the state a
display keeps (power, volume, mute, input) and answers exactly as the
protocol does. A test (or a `simulator:` section of a gateway config) can
make it misbehave, as a long cable next to a projector's ballast does:

- `corrupt_checksum`: replies arrive damaged (MDC: wrong checksum byte; LG
  has no checksum, so a character of the reply is garbled),
- `noise`: random line-noise bytes before each reply,
- `truncate`: replies are cut off halfway,
- `silent`: no reply at all (unplugged, wrong id, wrong baud rate),
- `nak_all`: every command refused (NAK `nak_code` / NG `ng_code`),
- `reply_id`: replies carry this display id instead of the real one.

A switch set to True stays on until set back to False; set to a number n it
affects only the next n replies. Counters: `frames_received` (well-formed
frames, for any display id), `bad_frames` (bytes it could not parse),
`replies_sent`.

What the simulated displays refuse (documented behaviour, or a choice where
real sets differ):

- MDC: an input code the display does not have, a volume over 100, and
  volume, mute or input while in standby are NAKed; the public MDC
  specification leaves NAK codes to the model, so the codes used here are
  this simulator's: `NAK_NOT_SUPPORTED` 0x01, `NAK_IN_STANDBY` 0x02. The
  status query answers in standby too (power 0, the remembered values). A
  frame with a bad checksum is ignored (its id cannot be trusted).
- LG: an input code the set does not have or a volume over 64 hex is NG 01
  (illegal code); in standby only `ka` is answered and anything else gets NG
  02 (function not supported), or, with `standby_silent`, nothing at all, as
  several LG manuals say their sets do. An unparseable line is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from campus.errors import ConfigError
from firmware_stubs.pty import SerialDeviceSim
from protocols import lg_serial, samsung_mdc

if TYPE_CHECKING:
    from device_profiles.config import DeviceConfig

NAK_NOT_SUPPORTED = 0x01
NAK_IN_STANDBY = 0x02

# Inputs a typical panel has, as protocol codes.
SAMSUNG_INPUTS = (0x14, 0x18, 0x21, 0x22, 0x23, 0x24, 0x25, 0x31, 0x33)  # PC, DVI, HDMI1-4 (+PC), DP1
LG_INPUTS = ("60", "70", "80", "90", "91", "a0", "a1", "c0", "d0")  # RGB, DVI, HDMI1/2 (+PC), DisplayPort


class _SerialDisplay(SerialDeviceSim):
    """What both display simulators share beyond the pty: the state a display keeps, `nak_all`, `reply_id`."""

    def __init__(self, link: str | Path | None, *, power: bool, volume: int, muted: bool, seed: int) -> None:
        super().__init__(link, seed=seed)
        self.power = power
        self.volume = volume
        self.muted = muted
        self.nak_all: bool | int = False
        self.reply_id: int | None = None


class SamsungMDCDisplay(_SerialDisplay):
    """A Samsung display answering MDC frames for `display_id` (and the 0xFE broadcast id)."""

    def __init__(self, link: str | Path | None = None, *, display_id: int = 0, power: bool = True,
                 volume: int = 20, muted: bool = False, input: int = 0x21, seed: int = 1,
                 inputs: tuple[int, ...] | list[int] | None = None) -> None:
        super().__init__(link, power=power, volume=volume, muted=muted, seed=seed)
        self.display_id = display_id
        self.input = input
        self.inputs = tuple(inputs if inputs is not None else SAMSUNG_INPUTS)
        self.aspect = 0x10  # PC 16:9
        self.nak_code = NAK_NOT_SUPPORTED

    def _split(self, buf: bytes) -> tuple[list[Any], bytes]:
        return samsung_mdc.split_frames(buf)

    def _corrupt(self, reply: bytes) -> bytes:
        return reply[:-1] + bytes((reply[-1] ^ 0x5A,))

    def _handle(self, frame: samsung_mdc.MDCFrame) -> bytes | None:
        if frame.command == samsung_mdc.REPLY:
            return None  # another display's reply on a shared line
        if frame.display_id not in (self.display_id, samsung_mdc.BROADCAST_ID):
            return None
        rid = self.display_id if self.reply_id is None else self.reply_id
        cmd, data = frame.command, frame.data

        def ack(*values: int) -> bytes:
            return samsung_mdc.encode_reply(rid, cmd, bytes(values))

        def nak(code: int) -> bytes:
            return samsung_mdc.encode_reply(rid, cmd, bytes((code,)), ack=False)

        if self._take("nak_all"):
            return nak(self.nak_code)
        if len(data) > 1:
            return nak(NAK_NOT_SUPPORTED)
        if cmd == samsung_mdc.CMD_STATUS:
            if data:
                return nak(NAK_NOT_SUPPORTED)
            return ack(int(self.power), self.volume, int(self.muted), self.input, self.aspect, 0, 0)
        if cmd == samsung_mdc.CMD_POWER:
            if not data:
                return ack(int(self.power))
            if data[0] not in (0, 1, 2):  # 2 = reboot
                return nak(NAK_NOT_SUPPORTED)
            self.power = data[0] != 0
            return ack(int(self.power))
        if cmd not in (samsung_mdc.CMD_VOLUME, samsung_mdc.CMD_MUTE, samsung_mdc.CMD_INPUT):
            return nak(NAK_NOT_SUPPORTED)
        if not data:
            current = {samsung_mdc.CMD_VOLUME: self.volume, samsung_mdc.CMD_MUTE: int(self.muted),
                       samsung_mdc.CMD_INPUT: self.input}[cmd]
            return ack(current)
        if not self.power:
            return nak(NAK_IN_STANDBY)
        value = data[0]
        if cmd == samsung_mdc.CMD_VOLUME:
            if value > 100:
                return nak(NAK_NOT_SUPPORTED)
            self.volume = value
        elif cmd == samsung_mdc.CMD_MUTE:
            if value > 1:
                return nak(NAK_NOT_SUPPORTED)
            self.muted = bool(value)
        else:
            if value not in self.inputs:
                return nak(NAK_NOT_SUPPORTED)
            self.input = value
        return ack(value)


class LGDisplay(_SerialDisplay):
    """An LG display answering two-letter commands for `set_id` (and the broadcast id 0)."""

    def __init__(self, link: str | Path | None = None, *, set_id: int = 1, power: bool = True,
                 volume: int = 20, muted: bool = False, input: str = "90", seed: int = 1,
                 inputs: tuple[str, ...] | list[str] | None = None, standby_silent: bool = False) -> None:
        super().__init__(link, power=power, volume=volume, muted=muted, seed=seed)
        self.set_id = set_id
        self.input = input.lower()
        self.inputs = tuple(c.lower() for c in (inputs if inputs is not None else LG_INPUTS))
        self.standby_silent = standby_silent
        self.ng_code = "01"

    def _split(self, buf: bytes) -> tuple[list[Any], bytes]:
        return lg_serial.split_commands(buf)

    def _corrupt(self, reply: bytes) -> bytes:
        return reply[:-2] + b"#" + reply[-1:]  # "a 01 OK01x" -> "a 01 OK0#x"

    def _handle(self, command: lg_serial.LGCommand) -> bytes | None:
        if command.set_id not in (self.set_id, lg_serial.BROADCAST_ID):
            return None
        rid = self.set_id if self.reply_id is None else self.reply_id
        letter, data = command.command[1], command.data

        def ok(value: str) -> bytes:
            return lg_serial.encode_reply(letter, rid, True, value)

        def ng(code: str) -> bytes:
            return lg_serial.encode_reply(letter, rid, False, code)

        if self._take("nak_all"):
            return ng(self.ng_code)
        if command.command == "ka":
            if data == "ff":
                return ok("01" if self.power else "00")
            if data not in ("00", "01"):
                return ng("01")
            self.power = data == "01"
            return ok(data)
        if command.command not in ("kf", "ke", "xb"):
            return ng("01")
        if not self.power:
            return None if self.standby_silent else ng("02")
        if command.command == "kf":
            if data == "ff":
                return ok(f"{self.volume:02x}")
            if " " in data or int(data, 16) > 0x64:
                return ng("01")
            self.volume = int(data, 16)
        elif command.command == "ke":
            if data == "ff":
                return ok("00" if self.muted else "01")  # 00 = mute on
            if data not in ("00", "01"):
                return ng("01")
            self.muted = data == "00"
        else:
            if data == "ff":
                return ok(self.input)
            if data not in self.inputs:
                return ng("01")
            self.input = data
        return ok(data)


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    raise ConfigError(f"simulator option {name} must be on/off or true/false, got {value!r}")


def simulator_for(dev: DeviceConfig, index: int) -> SamsungMDCDisplay | LGDisplay:
    """A configured, not started, display simulator for one device of a gateway config.

    Its pty is symlinked at `address.serial`, where the agent opens it; the
    display id (`display_id` / `set_id`) comes from the address and the
    inputs it has from the profile. `simulator:` options: `seed` (default
    index + 1), `power` / `muted` (on/off), `volume` (0-100), `input` (a
    profile input name; default the first), and the misbehaviour switches
    `silent`, `nak_all`, `noise`, `corrupt_checksum`, `truncate`.
    """
    profile = dev.profile_obj
    opts = dev.simulator
    link = dev.address.get("serial")
    if not link:
        raise ConfigError(f"device {dev.id}: address.serial is needed to place the simulated display's pty")
    names = list(profile.inputs)
    input_name = opts.get("input", names[0] if names else None)
    if input_name is not None and input_name not in profile.inputs:
        raise ConfigError(f"device {dev.id}: simulator input {input_name!r} is not one of {', '.join(names)}")
    volume = opts.get("volume", 20)
    if isinstance(volume, bool) or not isinstance(volume, int) or not 0 <= volume <= 100:
        raise ConfigError(f"device {dev.id}: simulator volume must be 0-100, got {volume!r}")
    common: dict[str, Any] = {"power": _flag(opts.get("power", "on"), "power"), "volume": volume,
                              "muted": _flag(opts.get("muted", "off"), "muted"),
                              "seed": int(opts.get("seed", index + 1))}
    sim: SamsungMDCDisplay | LGDisplay
    if profile.protocol == samsung_mdc.NAME:
        codes = [samsung_mdc.input_code(n, c) for n, c in profile.inputs.items()]
        sim = SamsungMDCDisplay(link, display_id=int(samsung_mdc.ADDRESS.value(dev.address, samsung_mdc.ID_FIELD)), inputs=codes or None,
                                **common, **({"input": codes[names.index(input_name)]} if input_name else {}))
    elif profile.protocol == lg_serial.NAME:
        lg_codes = [lg_serial.input_code(n, c) for n, c in profile.inputs.items()]
        sim = LGDisplay(link, set_id=int(lg_serial.ADDRESS.value(dev.address, lg_serial.ID_FIELD)), inputs=lg_codes or None,
                        standby_silent=bool(opts.get("standby_silent", False)),
                        **common, **({"input": lg_codes[names.index(input_name)]} if input_name else {}))
    else:
        raise ConfigError(f"device {dev.id}: no display simulator for protocol {profile.protocol!r}")
    for switch in ("silent", "nak_all", "noise", "corrupt_checksum", "truncate"):
        if switch in opts:
            setattr(sim, switch, opts[switch])
    return sim
