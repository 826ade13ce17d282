"""The demo's synthetic class rosters (issue 22): one class per classroom, with cards and QR codes to use.

`campus demo` needs people for its class register: a class in every room whose campus cards (一卡通) the
room's card-reader simulator swipes as the class arrives, and a pupil whose QR check-in card the room's
camera sees. Everything here is made up from a seed: the names are plausible Chinese names drawn from
common surnames and given-name characters, the card numbers are EM4100 IDs (10 hex digits, as the demo's
readers send them), the QR code ids follow the demo's `STU-<room>-<seat>` form. The roster is a CSV file
(UTF-8, the Chinese headers a school's export has) that central's roster import reads like any other, so
the numbers and codes are pseudonymised there, never stored.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass

# The roster's columns, as a school's export names them (central's roster import reads these headers):
# name, class, campus card, QR code, role, and the class's home room (教室: where the register is kept).
HEADER = ("姓名", "班级", "一卡通", "二维码", "角色", "教室")
STUDENT, TEACHER = "学生", "教师"
CLASS_SIZE = 8  # pupils per demo class: 24 in the default three-room school, plus a teacher per class
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗郑梁谢宋唐许韩冯邓曹"
GIVEN = "子涵浩宇欣怡梓轩雨萱博文思嘉佳俊一诺晨阳明悦睿泽若彤安琪天佑可馨家豪雅婷志远诗雯"
GRADES = ("初一", "初二", "初三", "高一", "高二", "高三")
CLASSES_PER_GRADE = 4


@dataclass(frozen=True)
class RoomRoster:
    """One room's class: what its card reader swipes and what its camera shows."""

    room: str
    klass: str
    cards: tuple[str, ...]     # 一卡通 numbers of the pupils and their teacher (EM4100 IDs: what the reader sends)
    qr_codes: tuple[str, ...]  # the pupils' QR check-in code ids


@dataclass(frozen=True)
class DemoRoster:
    """A demo school's roster: the CSV file's text and, per room name, its class."""

    school: str
    csv: str
    rooms: dict[str, RoomRoster]

    @property
    def cards(self) -> list[str]:
        return [card for room in self.rooms.values() for card in room.cards]

    @property
    def qr_codes(self) -> list[str]:
        return [code for room in self.rooms.values() for code in room.qr_codes]


def class_name(index: int) -> str:
    """The class taught in demo room `index` (1-based): 初一(1)班, 初一(2)班, ... then by number."""
    grade, number = divmod(index - 1, CLASSES_PER_GRADE)
    return f"{GRADES[grade]}({number + 1})班" if grade < len(GRADES) else f"{index}班"


def demo_roster(school: str, rooms: int, *, place_prefix: str = "", seed: int = 1,
                class_size: int = CLASS_SIZE) -> DemoRoster:
    """The roster of demo school `school` with `rooms` classrooms named 101, 102, ...: one class per room of
    `class_size` pupils (each with a card and a QR code) and a teacher (a card). `place_prefix` goes before
    the room in QR code ids ("2-" in a district's school 2, as its gateways' names have it). Deterministic
    under `seed`; every name, card number and code is unique in the school."""
    rng = random.Random(f"demo-roster-{school}-{seed}")
    version = rng.randrange(0xA0, 0x100)  # one batch of cards shares a version byte; A0-FF keeps a letter in
    # every number, so it can only be read as an EM4100 ID (protocols/card_ids.py card_uid)
    names: set[str] = set()
    numbers: set[str] = set()

    def person() -> str:
        while True:
            name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2))))
            if name not in names:
                names.add(name)
                return name

    def card() -> str:
        while True:
            number = f"{version:02X}{rng.randrange(1, 2**32):08X}"
            if number not in numbers:
                numbers.add(number)
                return number

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    by_room: dict[str, RoomRoster] = {}
    for index in range(1, rooms + 1):
        room, klass = f"{100 + index}", class_name(index)
        teacher = card()
        writer.writerow((person(), klass, teacher, "", TEACHER, room))
        cards, codes = [teacher], []
        for seat in range(1, class_size + 1):
            number, code = card(), f"STU-{place_prefix}{room}-{seat:04d}"
            writer.writerow((person(), klass, number, code, STUDENT, room))
            cards.append(number)
            codes.append(code)
        by_room[room] = RoomRoster(room, klass, tuple(cards), tuple(codes))
    return DemoRoster(school, out.getvalue(), by_room)
