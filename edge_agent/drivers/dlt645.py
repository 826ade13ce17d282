"""DL/T 645-2007 driver: a classroom's electricity meter on RS-485.

The codec is protocols/dlt645.py; the request/response loop (stale bytes dropped, resync on the
next frame, a repeat after bad frames, silence after the reply timeout) is
`serial_display.SerialDisplayDriver.transact`, shared with the display drivers: a meter read is
the same half-duplex exchange, and repeating a read is always safe.

One poll reads each item the profile lists (energy, voltage, current, power), one request each,
as a data concentrator does. A reply counts only if it comes from this meter's address, is a
reply to a read and names the identifier asked for: on a shared RS-485 line a late reply of
another meter, or the echo of our own request on an adapter without echo suppression, is a bad
frame, not a reading. An error reply (D1H) is a `DeviceError` naming the item and the error bits;
silence is a `DeviceError` too (status `fault`: the meter is not answering, the gateway is fine);
a port that cannot be opened is `DeviceUnreachable`.
"""

from __future__ import annotations

from typing import Any

from campus.errors import DeviceError
from campus.i18n import lazy_gettext, message_of
from edge_agent.drivers.base import Reading
from edge_agent.drivers.serial_display import SerialDisplayDriver
from protocols import dlt645
from protocols.serial_line import BadFrame


class DLT645Driver(SerialDisplayDriver):
    protocol = dlt645.NAME
    id_field = dlt645.ADDRESS_FIELD
    default_id = 0
    broadcast_id = -1  # reads always name one meter; the broadcast address only asks for an address
    device_word = "meter"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meter = str(self.address[dlt645.ADDRESS_FIELD])
        # The profile schema allows only the standard's items as metric names (protocols/dlt645.py).
        self.items = [dlt645.DATA_ITEMS[name] for name in self.profile.metrics]

    def _match(self, item: dlt645.DataItem | None) -> Any:
        """The check a frame must pass to be the reply to our read of `item` (None: the address read)."""
        def match(frame: dlt645.Frame) -> dlt645.Frame | BadFrame:
            expected = dlt645.READ_DATA if item is not None else dlt645.READ_ADDRESS
            if not frame.is_reply:
                return BadFrame(b"", f"a request (control 0x{frame.control:02x}) where a reply was due")
            if frame.function != expected:
                return BadFrame(b"", f"reply to function 0x{frame.function:02x}, expected 0x{expected:02x}")
            if item is None:
                return frame
            if frame.address != self.meter:
                return BadFrame(b"", f"reply from meter {frame.address}, expected {self.meter}")
            if not frame.is_error and frame.data[:4] != item.di_bytes:
                return BadFrame(b"", f"reply for DI {frame.data[:4][::-1].hex(' ')}, expected "
                                     f"{item.di_bytes[::-1].hex(' ')}")
            return frame
        return match

    async def read_item(self, item: dlt645.DataItem) -> float:
        """One read (11H) of one data item, its value in the metric's unit."""
        di = item.di_bytes[::-1].hex(" ")
        what = lazy_gettext("the read of %(metric)s (DI %(di)s) from meter %(meter)s", metric=item.metric, di=di,
                            meter=self.meter)
        frame = await self.transact(dlt645.read_request(self.meter, item), dlt645.split_frames,
                                    self._match(item), what)
        if frame.is_error:
            word = frame.data[0] if frame.data else 0
            raise DeviceError(lazy_gettext("%(device)s: meter %(meter)s refused the read of %(metric)s (DI %(di)s): "
                                           "%(errors)s (error word %(word)s)", device=self.device_id,
                                           meter=self.meter, metric=item.metric, di=di,
                                           errors=dlt645.errors_of(word), word=format(word, "#04x")))
        try:
            return dlt645.decode_value(item, frame.data[4:])
        except dlt645.DLT645FrameError as exc:
            raise DeviceError(lazy_gettext("%(device)s: %(error)s in the reply of meter %(meter)s to the read of DI "
                                           "%(di)s", device=self.device_id, error=message_of(exc), meter=self.meter,
                                           di=di)) from None

    async def read_address(self) -> str:
        """The address of the only meter on the line (13H to the broadcast address), as commissioning
        tools ask it; with several meters on a line their replies collide."""
        frame = await self.transact(dlt645.read_address_request(), dlt645.split_frames, self._match(None),
                                    lazy_gettext("the read of the meter address (broadcast)"))
        if len(frame.data) != 6:
            raise DeviceError(lazy_gettext("%(device)s: address reply has %(n)s data bytes, expected 6",
                                           device=self.device_id, n=len(frame.data)))
        try:
            return dlt645.address_text(frame.data)
        except dlt645.DLT645FrameError as exc:
            raise DeviceError(lazy_gettext("%(device)s: %(error)s in the address reply", device=self.device_id,
                                           error=message_of(exc))) from None

    async def read(self) -> Reading:
        return Reading(values={item.metric: await self.read_item(item) for item in self.items})
