"""Samsung MDC driver: Samsung commercial displays over RS-232C (Multiple Display Control).

The frame codec is protocols/samsung_mdc.py; this driver rides on
`serial_display.SerialDisplayDriver` for the request/response loop, resync
and retries.

Metrics: `power` and `muted` are the strings "on"/"off", `volume` 0-100,
`input` the profile's name for the source code, or "0x.." for a code the
profile does not name. A NAK to an action is `ActionRejected` (the display
refused it); a NAK to the status query, silence or only bad frames is
`DeviceError`.
"""

from __future__ import annotations

from typing import Any

from campus.errors import ActionRejected, DeviceError
from campus.i18n import LazyText, lazy_gettext
from edge_agent.drivers.base import Reading, action_word
from edge_agent.drivers.serial_display import SerialDisplayDriver
from protocols import samsung_mdc as mdc
from protocols.serial_line import BadFrame


def _on_off(value: int) -> str:
    return "on" if value else "off"


class SamsungMDCDriver(SerialDisplayDriver):
    protocol = mdc.NAME
    id_field = mdc.ID_FIELD
    default_id = mdc.DEFAULT_ID
    broadcast_id = mdc.BROADCAST_ID

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.input_codes = {name: mdc.input_code(name, v) for name, v in self.profile.inputs.items()}
        self.input_names = {code: name for name, code in self.input_codes.items()}
        self.last_power: str | None = None

    def input_name(self, code: int) -> str:
        return self.input_names.get(code, f"0x{code:02x}")

    async def command(self, command: int, data: bytes, what: str | LazyText, timeout: float | None = None) -> mdc.MDCReply:
        """One MDC transaction: the reply (ACK or NAK) to `command`."""
        def match(reply: mdc.MDCReply) -> mdc.MDCReply | BadFrame:
            if not self.accepts_id(reply.display_id):
                return BadFrame(b"", f"reply from display id {reply.display_id}, expected {self.unit_id}")
            if reply.command != command:
                return BadFrame(b"", f"reply to command 0x{reply.command:02x}, expected 0x{command:02x}")
            return reply
        return await self.transact(mdc.encode_frame(command, self.unit_id, data), mdc.split_replies, match, what, timeout)

    def _nak(self, reply: mdc.MDCReply, what: str | LazyText) -> LazyText:
        params = {"device": self.device_id, "display": str(reply.display_id), "what": what,
                  "code": f"0x{reply.error_code or 0:02x}"}
        if self.last_power == "off":
            return lazy_gettext("%(device)s: display %(display)s refused %(what)s (NAK, error code %(code)s; usually "
                                "a value or input this model does not support, or a command it does not take in "
                                "standby (the display was off at the last poll))", **params)
        return lazy_gettext("%(device)s: display %(display)s refused %(what)s (NAK, error code %(code)s; usually a "
                            "value or input this model does not support, or a command it does not take in standby)",
                            **params)

    async def read(self) -> Reading:
        reply = await self.command(mdc.CMD_STATUS, b"", lazy_gettext("status query"))
        if not reply.ack:
            raise DeviceError(self._nak(reply, lazy_gettext("the status query")))
        if len(reply.values) < 4:
            raise DeviceError(lazy_gettext("%(device)s: status reply has %(n)s values, expected at least 4",
                                           device=self.device_id, n=len(reply.values)))
        power, volume, mute, source = reply.values[:4]
        if volume > 100:
            raise DeviceError(lazy_gettext("%(device)s: status reply has volume %(volume)s, outside 0-100",
                                           device=self.device_id, volume=volume))
        self.last_power = _on_off(power)
        values = {"power": self.last_power, "volume": volume, "muted": _on_off(mute), "input": self.input_name(source)}
        return Reading(values={k: v for k, v in values.items() if k in self.profile.metrics})

    async def _execute(self, action: str, params: dict[str, Any]) -> str | LazyText:
        timeout = None
        detail: LazyText
        if action in ("power_on", "power_off"):
            cmd, value = mdc.CMD_POWER, int(action == "power_on")
            detail = lazy_gettext("power on") if action == "power_on" else lazy_gettext("power off")
            timeout = self.power_timeout
        elif action == "set_volume":
            cmd, value, detail = mdc.CMD_VOLUME, int(params["level"]), lazy_gettext("volume %(level)s",
                                                                                    level=params["level"])
        elif action in ("mute", "unmute"):
            cmd, value = mdc.CMD_MUTE, int(action == "mute")
            detail = lazy_gettext("muted") if action == "mute" else lazy_gettext("unmuted")
        elif action == "select_input":
            cmd, value = mdc.CMD_INPUT, self.input_codes[params["input"]]
            detail = lazy_gettext("input %(name)s", name=params["input"])
        else:  # validate_action lets only profile actions through; a profile lists only these six
            raise ActionRejected(lazy_gettext("%(device)s: %(action)s is not an MDC display action",
                                              device=self.device_id, action=repr(action)))
        what = action_word(action)  # named in a refusal or a timeout, translated with it
        reply = await self.command(cmd, bytes((value,)), what, timeout)
        if not reply.ack:
            raise ActionRejected(self._nak(reply, what))
        if cmd == mdc.CMD_POWER:
            self.last_power = _on_off(value)
        return detail
