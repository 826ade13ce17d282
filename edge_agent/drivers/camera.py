"""Camera driver: people counting and QR check-in on the gateway; only numbers and pseudonyms leave it.

A classroom camera is useful to the campus for two things: how many people
are in the room (`people_count`) and who checked in at the door (an
`attendance` event per QR code shown). Frames are personal data and stay on
the gateway: they are never put in a reading, an event or a log line.

Privacy of a check-in: the code printed on a student's card identifies a
minor, so it is replaced by its pseudonym where it is decoded
(`protocols.card_ids.qr_pseudonym`, HMAC-SHA256 keyed with the school's card
secret, the key card readers use; central's roster import makes the same
pseudonym of the code it is given). Events, the repeat filter, counters and
logs only ever see the pseudonym. Without the secret a camera counts people
and decodes no code; `qr_checkin: true` without it refuses to start, as a
card reader does (a device fault, never a raw code sent); `qr_checkin: false`
counts people only, secret or not.

OpenCV's capture is blocking, so each camera gets one background thread,
started by `open()`, that reads the source continuously (an RTSP/HTTP URL,
a video file, or a local camera index) and keeps the results; `read()` only
picks them up, so a poll never waits for a frame. The thread decodes every
frame the source delivers (a live stream must be drained or it lags) but
processes only `fps` frames per second, downscaled to `width` pixels.

Counting method (a ceiling camera looking down at the room):

1. Background model. The first `warmup_s` seconds of processed frames are
   combined by a per-pixel median, which removes people who move through
   them, and that image seeds a MOG2 background subtractor. MOG2 then learns
   with a fixed rate of 1/(`history_s` x fps), slow enough that a walking
   person is not learnt into the background.
2. Foreground. Each processed frame (Gaussian-blurred) is compared with the
   model; shadow detection is off because from above dark hair on a light
   floor looks exactly like a shadow. Morphological opening removes noise
   specks, closing joins head and shoulders into one blob.
3. Blobs. External contours with an area of at least `min_area` pixels (at
   the processing width) are people; with `person_area` set, a large blob
   counts as round(area / person_area) people (a group standing together).
4. Smoothing. `people_count` is the median of the last `smooth` counts.

Limits, inherent to background subtraction: a person who stays perfectly
still is learnt into the background after roughly 0.1 x `history_s` (MOG2's
background ratio 0.9), and a person present during the warm-up who then
leaves shows as a ghost for as long; people touching each other merge into
one blob (undercount unless `person_area` is set); a sudden light change
floods the foreground, which the driver treats as a new scene and warms up
again (no count meanwhile). For seated pupils a trained head or people
detector is the better tool; this method needs no downloaded model.

QR check-in: every `qr_every`-th processed frame is searched for a QR code
at up to `qr_width` pixels wide. A code seen again within `dedup_s` seconds
of its last sighting (so a card held up for several frames) is one event.
Events wait in the driver until the next poll that succeeds.

Failures: a source that cannot be opened raises `DeviceUnreachable`
(status offline); a stream that ends or breaks is reopened with
exponential backoff, and polls raise `DeviceError` (status fault)
meanwhile, or `DeviceUnreachable` once a reopen attempt finds the source
gone. A file source plays in real time (`realtime: true`, as a camera
would deliver it) and, with `loop: true`, starts over at its end without a
fault, for the demo; without `loop` its end is a stream end like any other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import statistics
import threading
import time
from collections import deque
from typing import Any

import cv2
import numpy as np

from campus.contract import ATTENDANCE_EVENT, attendance_data
from campus.errors import ConfigError, DeviceError
from campus.i18n import N_, LazyText, lazy_gettext, message_of
from edge_agent.drivers.base import (
    CardSecretMissing,
    DeviceEvent,
    DeviceUnreachable,
    Driver,
    Reading,
    card_secret_option,
)
from protocols import camera
from protocols.camera import describe_source
from protocols.card_ids import qr_pseudonym

log = logging.getLogger(__name__)

MAX_PENDING_EVENTS = 1000
MAX_CODE_CHARS = 512
# Numeric settings: device options override the profile's `timings`, which override these.
DEFAULTS: dict[str, float] = {
    "fps": 5.0,                    # frames processed per second
    "width": 320,                  # processing width in pixels (frames are downscaled to it)
    "min_area": 120,               # smallest blob (px at processing width) that is a person
    "person_area": 0,              # typical area of one person; 0 = every blob is one person
    "smooth": 5,                   # median over this many processed frames
    "warmup_s": 4.0,               # frames combined into the initial background
    "history_s": 300.0,            # background learning time constant
    "var_threshold": 25.0,         # MOG2 squared Mahalanobis distance for foreground
    "reset_fraction": 0.5,         # foreground fraction that means the scene changed
    "qr_every": 2,                 # search for QR codes in every Nth processed frame
    "qr_width": 1280,              # QR search width in pixels (wider frames are downscaled)
    "dedup_s": 10.0,               # the same code within this many seconds is one check-in
    "reopen_backoff_s": 1.0,       # first wait before reopening a broken stream
    "reopen_backoff_max_s": 30.0,  # longest wait between reopen attempts
    "stall_s": 10.0,               # no frame for this long is a fault
    "open_timeout_s": 5.0,         # network sources: open and read timeouts
}
INTEGER_SETTINGS = {"width", "smooth", "qr_every", "qr_width"}


class CameraDriver(Driver):
    """One camera: `people_count` and `attendance` events, from a background capture thread."""

    protocol = camera.NAME

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check_address(self.address)
        self.source: str | int = self.address["source"]
        self.where = describe_source(self.source)
        # A video file (paced, may loop) as opposed to a live source: a URL, an index or a /dev/video node.
        self.is_file = isinstance(self.source, str) and "://" not in self.source \
            and not self.source.startswith("/dev/")
        self.settings = {name: self._setting(name, default) for name, default in DEFAULTS.items()}
        s = self.settings
        if s["reopen_backoff_max_s"] < s["reopen_backoff_s"]:
            raise ConfigError(f"{self.device_id}: option reopen_backoff_max_s must be at least reopen_backoff_s")
        self.loop = self._flag("loop", False)
        self.realtime = self._flag("realtime", True)
        self._secret = card_secret_option(self.options)  # the school's card secret (agent.py puts it here)
        # QR check-in is on where the gateway has its school's secret, unless the config says off: a camera
        # counting people (occupancy, idle-off) must not stop for want of a secret it does not need. Asked
        # for explicitly without one, it is a config error: the driver refuses to start (open).
        self.qr_checkin = self._flag("qr_checkin", self._secret is not None)
        # Shared between the capture thread and read(), under _lock.
        self._lock = threading.Lock()
        self._counts: deque[int] = deque(maxlen=int(s["smooth"]))
        self._events: list[DeviceEvent] = []
        self._fault: DeviceError | None = None
        self._last_frame = 0.0
        self._seen: dict[str, float] = {}  # QR pseudonym -> media time last seen (capture thread only)
        self.media_s = 0.0  # position on the stream's own clock (video time for files), for tests and stats
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._started: concurrent.futures.Future[None] | None = None

    def _setting(self, name: str, default: float) -> float:
        raw = self.options.get(name, self.profile.timings.get(name, default))
        integer = name in INTEGER_SETTINGS
        ok = not isinstance(raw, bool) and isinstance(raw, int | float) and raw >= 0 \
            and (not integer or float(raw).is_integer())
        zero_ok = name in ("person_area", "min_area", "stall_s")
        if not ok or (raw == 0 and not zero_ok):
            kind = "a whole number" if integer else "a number"
            raise ConfigError(f"{self.device_id}: option {name} must be {kind} "
                              f"{'of 0 or more' if zero_ok else 'above 0'}, got {raw!r}")
        return int(raw) if integer else float(raw)

    def _flag(self, name: str, default: bool) -> bool:
        raw = self.options.get(name, default)
        if not isinstance(raw, bool):
            raise ConfigError(f"{self.device_id}: option {name} must be true or false, got {raw!r}")
        return raw

    # ------------------------------------------------------------ driver interface

    async def open(self) -> None:
        """Start the capture thread (once) and wait until the source is open; CardSecretMissing if QR
        check-in is on without the gateway's card secret (each poll says so: a device fault)."""
        if self.qr_checkin and self._secret is None:
            raise CardSecretMissing(lazy_gettext(
                "%(device)s: camera refused to start: QR check-in needs the gateway config's card_secret (codes are "
                "pseudonymised with it, never sent raw); set option qr_checkin: false to count people only",
                device=self.device_id))
        started = self._started
        thread = self._thread
        if started is None or thread is None or (started.done() and (
                started.exception() is not None or not thread.is_alive())):
            started = self._start_worker()
        await asyncio.shield(asyncio.wrap_future(started))

    def _start_worker(self) -> concurrent.futures.Future[None]:
        self._stop = threading.Event()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            self._counts.clear()
            self._fault = None
        self._started = started
        self._thread = threading.Thread(target=self._run, args=(started, self._stop),
                                        name=f"camera-{self.device_id}", daemon=True)
        self._thread.start()
        return started

    async def close(self) -> None:
        thread = self._thread
        self._stop.set()
        self._thread = self._started = None
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join, self.settings["open_timeout_s"] + 2)

    async def read(self) -> Reading:
        await self.open()
        stall = self.settings["stall_s"]
        with self._lock:
            if self._fault is not None:  # events stay queued for the next good poll
                raise type(self._fault)(message_of(self._fault))
            if stall and time.monotonic() - self._last_frame > stall:
                raise DeviceError(lazy_gettext("%(device)s: no frame from %(where)s for %(seconds)s s",
                                               device=self.device_id, where=self.where,
                                               seconds=format(time.monotonic() - self._last_frame, ".0f")))
            events, self._events = self._events, []
            values: dict[str, int] = {}
            if self._counts:
                values["people_count"] = int(statistics.median_low(self._counts))
        return Reading(values=dict(values), events=events)

    # ------------------------------------------------------------ capture thread

    def _capture(self) -> cv2.VideoCapture | None:
        """Open the source, or None if it cannot be opened (never raises)."""
        if isinstance(self.source, str) and "://" not in self.source and not os.path.exists(self.source):
            return None  # spares OpenCV's own warning about a missing file
        try:
            if isinstance(self.source, str) and "://" in self.source:
                ms = int(self.settings["open_timeout_s"] * 1000)
                cap = cv2.VideoCapture(self.source, cv2.CAP_ANY,
                                       [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
            else:
                cap = cv2.VideoCapture(self.source)
        except cv2.error:
            return None
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _run(self, started: concurrent.futures.Future[None], stop: threading.Event) -> None:
        cap = self._capture()
        if cap is None:
            started.set_exception(DeviceUnreachable(lazy_gettext("%(device)s: cannot open %(where)s",
                                                                 device=self.device_id, where=self.where)))
            return
        with self._lock:
            self._last_frame = time.monotonic()
        started.set_result(None)
        backoff = self.settings["reopen_backoff_s"]
        counter = _Counter(self)
        try:
            while cap is not None:
                began = time.monotonic()
                reason = counter.stream(cap, stop)
                cap.release()
                cap = None
                if reason is None:  # stopping
                    break
                if reason == "loop":
                    cap = self._capture()
                    if cap is not None:
                        self.count("loops")
                        continue
                    reason = lazy_gettext("cannot reopen %(where)s", where=self.where)
                if time.monotonic() - began > self.settings["reopen_backoff_max_s"]:
                    backoff = self.settings["reopen_backoff_s"]  # it ran well: start the backoff over
                self._set_fault(DeviceError(lazy_gettext(
                    "%(device)s: %(reason)s; reopening in %(seconds)s s", device=self.device_id,
                    reason=reason if isinstance(reason, LazyText) else LazyText(reason), seconds=format(backoff, ".1f"))))
                self.count("stream_breaks")
                log.warning("%s: %s; reopening in %.1f s", self.device_id, reason, backoff)
                while not stop.wait(backoff):
                    cap = self._capture()
                    if cap is not None:
                        break
                    backoff = min(backoff * 2, self.settings["reopen_backoff_max_s"])
                    self._set_fault(DeviceUnreachable(lazy_gettext(
                        "%(device)s: cannot reopen %(where)s; next try in %(seconds)s s", device=self.device_id,
                        where=self.where, seconds=format(backoff, ".1f"))))
                if cap is not None:
                    # Should it break again soon (a server that accepts and drops), wait longer next time.
                    backoff = min(backoff * 2, self.settings["reopen_backoff_max_s"])
                    self.count("reopens")
                    log.info("%s: %s reopened", self.device_id, self.where)
                    counter.reset()  # the scene may have changed while the stream was down
        except Exception as exc:  # a bug here must not kill the gateway; the next poll restarts the thread
            log.exception("%s: capture thread failed", self.device_id)
            self._set_fault(DeviceError(lazy_gettext("%(device)s: capture failed (%(error)s)", device=self.device_id,
                                                     error=type(exc).__name__)))
        finally:
            if cap is not None:
                cap.release()

    def _set_fault(self, fault: DeviceError | None) -> None:
        with self._lock:
            self._fault = fault

    def _frame_arrived(self, media: float) -> None:
        with self._lock:
            self._last_frame = time.monotonic()
            self._fault = None
        self.media_s = media

    def _add_count(self, n: int | None) -> None:
        with self._lock:
            if n is None:
                self._counts.clear()
            else:
                self._counts.append(n)

    def _saw_code(self, code: str, media: float) -> None:
        assert self._secret is not None  # open() refuses to start QR check-in without it
        person = qr_pseudonym(self._secret, code)  # the raw code goes no further than this line
        last = self._seen.get(person)
        self._seen[person] = media
        if last is not None and media - last <= self.settings["dedup_s"]:
            return
        if len(self._seen) > 256:  # forget codes not seen for a while
            horizon = media - self.settings["dedup_s"]
            self._seen = {c: t for c, t in self._seen.items() if t >= horizon}
        event = DeviceEvent(ATTENDANCE_EVENT, attendance_data(person, self.device_id), time.time())
        with self._lock:
            if len(self._events) >= MAX_PENDING_EVENTS:
                del self._events[0]
                self.count("events_dropped")
            self._events.append(event)
        self.count("attendance")


def _kernel_size(width: int) -> Any:
    """Kernel sizes tuned at 320 px wide, scaled to the processing width (and odd, as OpenCV wants)."""
    return lambda n: max(1, round(n * width / 320)) | 1


class _Counter:
    """The capture thread's per-frame work: pacing, background model, blobs, QR codes."""

    def __init__(self, driver: CameraDriver) -> None:
        self.d = driver
        s = driver.settings
        self.period = 1.0 / s["fps"]
        self.width = int(s["width"])
        self.warm_frames = max(1, round(s["warmup_s"] * s["fps"]))
        self.rate = 1.0 / max(1.0, s["history_s"] * s["fps"])
        odd = _kernel_size(self.width)
        self.blur = (odd(5), odd(5))
        self.open_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (odd(3), odd(3)))
        self.close_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (odd(7), odd(7)))
        self.qr = cv2.QRCodeDetector()
        self.media = -1.0       # the stream's clock: video time for files, wall time for live sources
        self.next_at = 0.0      # media time of the next frame to process
        self.processed = 0
        self.reset()

    def reset(self) -> None:
        """Forget the background: warm up again (after a reopen or a scene change)."""
        self.model: cv2.BackgroundSubtractorMOG2 | None = None
        self.warm: list[np.ndarray] = []
        self.d._add_count(None)

    def stream(self, cap: cv2.VideoCapture, stop: threading.Event) -> str | None:
        """Read one opened stream until it ends ("loop" for a looping file) or `stop` is set (None)."""
        d = self.d
        fps = cap.get(cv2.CAP_PROP_FPS) if d.is_file else 0.0
        if not 0 < fps < 1000:
            fps = 25.0
        tolerance = 0.5 / fps if d.is_file else 0.0
        media0 = self.media + (1.0 / fps if d.is_file else 0.0) if self.media >= 0 else 0.0
        wall0 = time.monotonic()
        frame_no = 0
        while not stop.is_set():
            if not cap.grab():
                if d.is_file:
                    return "loop" if d.loop and frame_no else N_("the video file ended")
                return N_("the stream ended") if frame_no else N_("no frame from the camera")
            if d.is_file:
                media = media0 + frame_no / fps
                if d.realtime:
                    wait = wall0 + (media - media0) - time.monotonic()
                    if wait > 0 and stop.wait(wait):
                        return None
            else:
                media = media0 + time.monotonic() - wall0
            frame_no += 1
            self.media = media
            d._frame_arrived(media)
            d.count("frames")
            if media + tolerance < self.next_at:
                continue  # decoded (a live stream must be drained) but not processed
            self.next_at += self.period
            if self.next_at <= media:  # fell behind: do not try to catch up
                self.next_at = media + self.period
            ok, frame = cap.retrieve()
            if not ok or frame is None:
                d.count("bad_frames")
                continue
            self.process(frame, media)
        return None

    def process(self, frame: np.ndarray, media: float) -> None:
        d = self.d
        self.processed += 1
        d.count("processed")
        h, w = frame.shape[:2]
        small = frame if w <= self.width else \
            cv2.resize(frame, (self.width, max(1, round(h * self.width / w))), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, self.blur, 0)
        if self.model is None:
            if self.warm and self.warm[0].shape != small.shape:
                self.warm = []  # the resolution changed
            self.warm.append(small)
            if len(self.warm) >= self.warm_frames:
                background = np.median(np.stack(self.warm), axis=0).astype(np.uint8)
                self.model = cv2.createBackgroundSubtractorMOG2(
                    history=max(1, round(1 / self.rate)), varThreshold=d.settings["var_threshold"],
                    detectShadows=False)
                self.model.apply(background, learningRate=1.0)
                self.warm = []
        else:
            self.count_people(small)
        if d.qr_checkin and self.processed % int(d.settings["qr_every"]) == 0:
            self.scan(frame, media)

    def count_people(self, small: np.ndarray) -> None:
        assert self.model is not None
        d = self.d
        fg = self.model.apply(small, learningRate=self.rate)
        if fg.shape != small.shape[:2]:  # the resolution changed under a running model
            self.reset()
            return
        _, mask = cv2.threshold(fg, 200, 255, cv2.THRESH_BINARY)
        if cv2.countNonZero(mask) > d.settings["reset_fraction"] * mask.size:
            d.count("scene_resets")  # lights switched, camera moved: the old background is useless
            self.reset()
            return
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self.open_kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self.close_kernel)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        areas = [a for a in (cv2.contourArea(c) for c in contours) if a >= d.settings["min_area"]]
        person = d.settings["person_area"]
        n = sum(max(1, round(a / person)) for a in areas) if person else len(areas)
        d._add_count(n)

    def scan(self, frame: np.ndarray, media: float) -> None:
        d = self.d
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        h, w = gray.shape[:2]
        limit = int(d.settings["qr_width"])
        if w > limit:
            gray = cv2.resize(gray, (limit, max(1, round(h * limit / w))), interpolation=cv2.INTER_AREA)
        d.count("qr_scans")
        try:
            text, _, _ = self.qr.detectAndDecode(gray)
        except cv2.error:
            d.count("qr_errors")
            return
        if text:
            if len(text) > MAX_CODE_CHARS:
                d.count("qr_rejected")
                return
            d._saw_code(text, media)
