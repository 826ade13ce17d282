"""Cameras: an RTSP/HTTP stream, a video file or a local camera index, decoded by OpenCV in the driver.

There is no frame codec of ours here (OpenCV decodes the stream, and the simulator writes a video
file for it); what the driver and simulator share is the address: `source`, and how a source is
named in messages without its credentials.
"""

from __future__ import annotations

from campus.i18n import N_
from protocols.spec import Address, Field, Protocol, describe_source

__all__ = ["ADDRESS", "NAME", "PROTOCOL", "URL_SCHEMES", "describe_source"]

NAME = "camera"
URL_SCHEMES = ("rtsp", "rtsps", "http", "https")

ADDRESS = Address(fields=(
    Field("source", "source", required=True, schemes=URL_SCHEMES,
          label="an rtsp:// URL, a video file path or a camera index",
          hint=N_("rtsp://user:pass@10.1.2.40/stream1, a video file, or a camera index")),
))

PROTOCOL = Protocol(name=NAME, label="Camera (RTSP, video file)", address=ADDRESS,
                    driver="edge_agent.drivers.camera:CameraDriver", simulator="firmware_stubs.camera:simulator_for")
