"""LG display driver: LG signage and TVs over RS-232C with LG's two-letter text commands.

The codec (frames, NG codes, the command set) is protocols/lg_serial.py; the
request/response loop, resync and retries are
`serial_display.SerialDisplayDriver`'s.

Many sets answer nothing but `ka` in standby, so a poll of a set that is off
reports `power` only. NG 00/01 (illegal code) and 02 (function not
supported) to an action are `ActionRejected`; 03 (wait more time: the set is
busy) is a `DeviceError`, worth retrying later. Any NG to a poll is a
`DeviceError`.

Metrics: `power` and `muted` are "on"/"off", `volume` 0-100, `input` the
profile's name for the code, or "0x.." for a code the profile does not name.
"""

from __future__ import annotations

from typing import Any

from campus.errors import ActionRejected, DeviceError
from campus.i18n import LazyText, lazy_gettext
from edge_agent.drivers.base import Reading, action_word
from edge_agent.drivers.serial_display import SerialDisplayDriver
from protocols import lg_serial as lg
from protocols.serial_line import BadFrame


def _on_off(on: bool) -> str:
    return "on" if on else "off"


class LGSerialDriver(SerialDisplayDriver):
    protocol = lg.NAME
    id_field = lg.ID_FIELD
    default_id = lg.DEFAULT_ID
    broadcast_id = lg.BROADCAST_ID

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.input_codes = {name: lg.input_code(name, v) for name, v in self.profile.inputs.items()}
        self.input_names = {code: name for name, code in self.input_codes.items()}

    def input_name(self, code: str) -> str:
        return self.input_names.get(code, f"0x{code}")

    async def command(self, command: str, data: str, what: str | LazyText, timeout: float | None = None) -> lg.LGReply:
        """One exchange: the set's OK or NG reply to `command`."""
        def match(reply: lg.LGReply) -> lg.LGReply | BadFrame:
            if not self.accepts_id(reply.set_id):
                return BadFrame(b"", f"reply from set id {reply.set_id}, expected {self.unit_id}")
            if reply.command2 != command[1]:
                return BadFrame(b"", f"reply to command ?{reply.command2}, expected {command}")
            return reply
        return await self.transact(lg.encode_command(command, self.unit_id, data), lg.split_replies, match, what, timeout)

    def _ng(self, reply: lg.LGReply, what: str | LazyText) -> LazyText:
        return lazy_gettext("%(device)s: set %(set)s refused %(what)s (NG %(code)s: %(meaning)s)",
                            device=self.device_id, set=str(reply.set_id), what=what, code=reply.data,
                            meaning=lg.ng_meaning(reply.data))

    async def _query(self, command: str, what: LazyText) -> int | str:
        reply = await self.command(command, "ff", what)
        if not reply.ok:
            raise DeviceError(self._ng(reply, what))
        if not lg.HEX2.fullmatch(reply.data):
            raise DeviceError(lazy_gettext("%(device)s: %(what)s answered %(reply)s, expected two hex digits",
                                           device=self.device_id, what=what, reply=repr(reply.data[:40])))
        return reply.data if command == "xb" else int(reply.data, 16)

    async def read(self) -> Reading:
        power = await self._query("ka", lazy_gettext("power query"))
        values: dict[str, str | int] = {"power": _on_off(power != 0)}
        if power:
            metrics = self.profile.metrics
            if "volume" in metrics:
                volume = await self._query("kf", lazy_gettext("volume query"))
                if not isinstance(volume, int) or volume > 100:
                    raise DeviceError(lazy_gettext("%(device)s: volume query answered %(volume)s, outside 0-100",
                                                   device=self.device_id, volume=volume))
                values["volume"] = volume
            if "muted" in metrics:
                values["muted"] = _on_off(await self._query("ke", lazy_gettext("mute query")) == 0)  # 00 = mute on
            if "input" in metrics:
                values["input"] = self.input_name(str(await self._query("xb", lazy_gettext("input query"))))
        return Reading(values={k: v for k, v in values.items() if k in self.profile.metrics})

    async def _execute(self, action: str, params: dict[str, Any]) -> str | LazyText:
        timeout = None
        detail: LazyText
        if action in ("power_on", "power_off"):
            cmd, data = "ka", "01" if action == "power_on" else "00"
            detail = lazy_gettext("power on") if action == "power_on" else lazy_gettext("power off")
            timeout = self.power_timeout
        elif action == "set_volume":
            cmd, data, detail = "kf", f"{int(params['level']):02x}", lazy_gettext("volume %(level)s",
                                                                                  level=params["level"])
        elif action in ("mute", "unmute"):
            cmd, data = "ke", "00" if action == "mute" else "01"
            detail = lazy_gettext("muted") if action == "mute" else lazy_gettext("unmuted")
        elif action == "select_input":
            cmd, data, detail = "xb", self.input_codes[params["input"]], lazy_gettext("input %(name)s",
                                                                                      name=params["input"])
        else:  # validate_action lets only profile actions through; a profile lists only these six
            raise ActionRejected(lazy_gettext("%(device)s: %(action)s is not an LG display action",
                                              device=self.device_id, action=repr(action)))
        what = action_word(action)  # named in a refusal or a timeout, translated with it
        reply = await self.command(cmd, data, what, timeout)
        if not reply.ok:
            if reply.data == lg.NG_BUSY:
                raise DeviceError(self._ng(reply, what))
            raise ActionRejected(self._ng(reply, what))
        return detail
