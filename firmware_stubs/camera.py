"""A synthetic top-down classroom camera: a video file with a known answer.

There is no camera in a test or the demo, and no RTSP server to stand in for
one, so this module makes the next best thing: a real MJPG `.avi` that the
camera driver opens with the same `cv2.VideoCapture` it uses for a camera.
The video shows a classroom from the ceiling (floor, rows of desks, the
door), a known number of people (head and shoulders seen from above) each
walking a closed path inside a cell of its own, so no two ever touch and the
right count is never ambiguous, and optionally a QR check-in code carried by
the first person for part of the video. Paths repeat with the length of the
video, so a looping player shows one seamless scene. Everything is drawn
from a seeded random generator: the same arguments give the same frames.

`CameraSimulator` writes that video to the device's configured `source` path
when it starts, which is all `campus sim` has to do for a camera.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from campus.errors import ConfigError

FLOOR_BGR = (168, 176, 182)
DESK_BGR = (62, 96, 132)
HAIR_BGR = (28, 26, 30)
# School-uniform shirts: all far from the floor and desk colours.
SHIRTS_BGR = [(180, 70, 30), (40, 40, 190), (235, 235, 240), (60, 150, 40), (30, 150, 220),
              (150, 40, 140), (90, 60, 20), (200, 140, 60)]
QR_SHOWN = (0.2, 0.55)  # part of the video (fractions) during which the code is held up


@dataclass(frozen=True)
class VideoInfo:
    """What a generated video contains: the answer a correct driver finds."""

    path: Path
    people: int
    qr_text: str | None
    frames: int
    fps: float
    size: tuple[int, int]
    qr_from_s: float | None  # when the code is visible (seconds into the video)
    qr_to_s: float | None


@dataclass
class _Person:
    cx: float
    cy: float
    ax: float
    ay: float
    kx: int
    ky: int
    px: float
    py: float
    shirt: tuple[int, int, int]


class ClassroomScene:
    """Draws frame `i` of the classroom; deterministic under `seed`."""

    def __init__(self, people: int, *, seconds: float = 8.0, fps: float = 10.0,
                 size: tuple[int, int] = (320, 240), seed: int = 1, qr_text: str | None = None) -> None:
        if people < 0:
            raise ValueError(f"people must be 0 or more, got {people}")
        w, h = size
        if w < 160 or h < 120:
            raise ValueError(f"size must be at least 160x120, got {w}x{h}")
        self.people, self.seconds, self.fps, self.size = people, seconds, fps, size
        self.frames = max(1, round(seconds * fps))
        self.rng = random.Random(seed)
        self.head_r = max(5, round(h / 34))
        self.background = self._background(seed)
        self.card = self._card(qr_text) if qr_text else None
        self.qr_text = qr_text
        self.persons = self._paths()

    # ------------------------------------------------------------ the room

    def _background(self, seed: int) -> np.ndarray:
        w, h = self.size
        img = np.empty((h, w, 3), np.uint8)
        img[:] = FLOOR_BGR
        # Floor tiles and a fixed, seeded texture (the camera sees a real floor, not a flat colour).
        tile = max(16, w // 10)
        for x in range(0, w, tile):
            cv2.line(img, (x, 0), (x, h - 1), (158, 166, 172), 1)
        for y in range(0, h, tile):
            cv2.line(img, (0, y), (w - 1, y), (158, 166, 172), 1)
        texture = np.random.default_rng(seed).normal(0, 4, (h, w, 1))
        img = np.clip(img.astype(np.float32) + cv2.GaussianBlur(texture, (5, 5), 0)[..., None], 0, 255)
        img = img.astype(np.uint8)
        # Rows of double desks, the teacher's desk at the front, the door on the left wall.
        dw, dh = w // 9, max(6, h // 22)
        for row in range(4):
            y = int(h * (0.22 + row * 0.2))
            for col in range(4):
                x = int(w * (0.1 + col * 0.22))
                cv2.rectangle(img, (x, y), (x + dw, y + dh), DESK_BGR, -1)
                cv2.rectangle(img, (x, y), (x + dw, y + dh), (40, 64, 90), 1)
        cv2.rectangle(img, (int(w * 0.38), int(h * 0.04)), (int(w * 0.62), int(h * 0.1)), (50, 80, 110), -1)
        cv2.rectangle(img, (0, int(h * 0.7)), (max(3, w // 80), int(h * 0.92)), (70, 70, 70), -1)
        return img

    def _card(self, text: str) -> np.ndarray:
        code = cv2.QRCodeEncoder.create().encode(text)
        if code is None or code.size == 0:
            raise ValueError(f"cannot encode {text!r} as a QR code")
        module = max(3, round(self.size[1] / 80))  # 3 px modules decode reliably through MJPG
        code = cv2.resize(code, None, fx=module, fy=module, interpolation=cv2.INTER_NEAREST)
        quiet = 2 * module
        code = cv2.copyMakeBorder(code, quiet, quiet, quiet, quiet, cv2.BORDER_CONSTANT, value=255)
        return cv2.cvtColor(code, cv2.COLOR_GRAY2BGR)

    @staticmethod
    def _grid(n: int, w: float, h: float) -> tuple[int, int]:
        """Columns and rows of cells for `n` people in a w x h area, cells as square as possible."""
        best, best_side = (1, max(1, n)), 0.0
        for cols in range(1, max(1, n) + 1):
            rows = math.ceil(max(1, n) / cols)
            side = min(w / cols, h / rows)
            if side > best_side:
                best, best_side = (cols, rows), side
        return best

    def _cells(self) -> list[tuple[float, float, float, float]]:
        """One rectangle (x0, y0, x1, y1) per person; the card holder gets the strip by the door."""
        w, h = self.size
        cells: list[tuple[float, float, float, float]] = []
        x_start, n = 0.0, self.people
        if self.card is not None and self.people:
            strip = min(w / 2, self.card.shape[1] + 4 * self.head_r + 8 + w / 10)
            cells.append((0.0, 0.0, strip, float(h)))
            x_start, n = strip, n - 1
        if n:
            cols, rows = self._grid(n, w - x_start, h)
            cw, ch = (w - x_start) / cols, h / rows
            cells += [(x_start + c * cw, r * ch, x_start + (c + 1) * cw, (r + 1) * ch)
                      for r in range(rows) for c in range(cols)][:n]
        return cells

    def _paths(self) -> list[_Person]:
        w, h = self.size
        reach = 1.9 * self.head_r + 4  # half the body's extent plus a gap to the cell edge
        card = self.card.shape[0] if self.card is not None else 0
        persons: list[_Person] = []
        # Turns per video: a walk of a few seconds per lap, whole numbers so the video loops seamlessly.
        laps = max(1, round(self.seconds / 5))
        for i, (cx0, cy0, cx1, cy1) in enumerate(self._cells()):
            x0, y0, x1, y1 = cx0 + reach, cy0 + reach, cx1 - reach, cy1 - reach
            if i == 0 and card:
                # The card is held out beside the head, up and to the right: keep it inside the cell too.
                x1 -= card
                y0 += card - self.head_r
            ax, ay = (x1 - x0) / 2, (y1 - y0) / 2
            if min(ax, ay) < 2:
                raise ValueError(f"{self.people} people do not fit in {w}x{h}"
                                 f"{' with a QR card' if card else ''}; use a larger size")
            persons.append(_Person(cx=(x0 + x1) / 2, cy=(y0 + y1) / 2, ax=ax, ay=ay,
                                   kx=laps + self.rng.randint(0, 1), ky=laps + self.rng.randint(1, 2),
                                   px=self.rng.uniform(0, 2 * math.pi), py=self.rng.uniform(0, 2 * math.pi),
                                   shirt=SHIRTS_BGR[self.rng.randrange(len(SHIRTS_BGR))]))
        return persons

    # ------------------------------------------------------------ frames

    @property
    def qr_interval(self) -> tuple[float, float] | None:
        if self.card is None or not self.persons:
            return None
        return (round(QR_SHOWN[0] * self.seconds, 3), round(QR_SHOWN[1] * self.seconds, 3))

    def position(self, p: _Person, t: float) -> tuple[float, float]:
        a = 2 * math.pi * t / self.seconds
        return p.cx + p.ax * math.sin(p.kx * a + p.px), p.cy + p.ay * math.sin(p.ky * a + p.py)

    def frame(self, i: int, noise: np.random.Generator | None = None) -> np.ndarray:
        t = i / self.fps
        img = self.background.copy()
        r = self.head_r
        qr = self.qr_interval
        for n, p in enumerate(self.persons):
            x, y = self.position(p, t)
            # Shoulders across the direction of walking, the head on top.
            x2, y2 = self.position(p, t + 0.05)
            angle = math.degrees(math.atan2(y2 - y, x2 - x)) + 90
            centre = (round(x), round(y))
            cv2.ellipse(img, centre, (round(1.8 * r), round(1.05 * r)), angle, 0, 360, p.shirt, -1)
            cv2.circle(img, centre, r, HAIR_BGR, -1)
            if n == 0 and self.card is not None and qr is not None and qr[0] <= t < qr[1]:
                s = self.card.shape[0]
                # Held up beside the head, overlapping the shoulders: one blob with its holder.
                cx, cy = round(x) + r // 2, round(y) - s + r // 2
                img[cy:cy + s, cx:cx + s] = self.card
        if noise is not None:  # sensor noise, different in every frame
            img = np.clip(img.astype(np.int16) + noise.integers(-3, 4, img.shape, dtype=np.int16), 0, 255)
            img = img.astype(np.uint8)
        return img


def make_classroom_video(path: str | Path, people: int, qr_text: str | None = None, seconds: float = 8.0,
                         fps: float = 10.0, size: tuple[int, int] = (320, 240), seed: int = 1) -> VideoInfo:
    """Write a top-down classroom video (MJPG .avi) with `people` walking people and, if given,
    `qr_text` as a QR code held up for part of it. Returns what the video contains."""
    path = Path(path)
    scene = ClassroomScene(people, seconds=seconds, fps=fps, size=tuple(size), seed=seed,  # type: ignore[arg-type]
                           qr_text=qr_text)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place: a reader never sees half a video.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), fps, scene.size)
    if not writer.isOpened():
        raise OSError(f"cannot write video {path}")
    noise = np.random.default_rng(seed + 7919)
    try:
        for i in range(scene.frames):
            writer.write(scene.frame(i, noise))
    finally:
        writer.release()
    os.replace(tmp, path)
    qr = scene.qr_interval
    return VideoInfo(path=path, people=people, qr_text=qr_text if qr else None, frames=scene.frames, fps=fps,
                     size=scene.size, qr_from_s=qr[0] if qr else None, qr_to_s=qr[1] if qr else None)


class CameraSimulator:
    """A camera for `campus sim`: writes its video to the configured source path on start.

    The agent's camera driver then opens that file like a camera stream (with
    `loop: true` in the device options it plays forever)."""

    def __init__(self, path: str | Path, people: int = 4, qr_text: str | None = None, *, seconds: float = 20.0,
                 fps: float = 10.0, size: tuple[int, int] = (320, 240), seed: int = 1) -> None:
        self.path = Path(path)
        self.people, self.qr_text, self.seconds, self.fps, self.size, self.seed = \
            people, qr_text, seconds, fps, size, seed
        self.info: VideoInfo | None = None
        ClassroomScene(people, seconds=seconds, fps=fps, size=size, seed=seed, qr_text=qr_text)  # fail early

    async def start(self) -> None:
        if self.info is None:
            self.info = await asyncio.to_thread(make_classroom_video, self.path, self.people, self.qr_text,
                                                self.seconds, self.fps, self.size, self.seed)

    async def stop(self) -> None:
        """Nothing runs: the file stays, an agent may still be playing it."""

    async def __aenter__(self) -> CameraSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def simulator_for(dev: Any, index: int) -> CameraSimulator:
    """The simulator for one camera in a gateway config (a `device_profiles.config.DeviceConfig`).

    `address.source` must be a file path: it is where the video is written and
    what the agent opens. `simulator:` options: people (4), qr_text (none),
    seconds (20), fps (10), size ([320, 240]), seed (the device's index + 1).
    """
    source = dev.address.get("source")
    if not isinstance(source, str) or "://" in source:
        raise ConfigError(f"device {dev.id}: the camera simulator writes a video file, so address.source must be "
                          f"a file path, got {source!r}")
    opts = dev.simulator
    try:
        size = tuple(int(v) for v in opts.get("size", (320, 240)))
        if len(size) != 2:
            raise ValueError("size must be [width, height]")
        qr = opts.get("qr_text")
        return CameraSimulator(source, people=int(opts.get("people", 4)), qr_text=str(qr) if qr else None,
                               seconds=float(opts.get("seconds", 20.0)), fps=float(opts.get("fps", 10.0)),
                               size=size, seed=int(opts.get("seed", index + 1)))  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"device {dev.id}: simulator options: {exc}") from None
