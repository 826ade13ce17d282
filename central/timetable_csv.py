"""A school's timetable as CSV: imported all or nothing, exported for editing in a spreadsheet.

The file is what a school's office keeps in Excel: UTF-8 or GB18030 (a Chinese Excel's "CSV"), a
header row in English or Chinese, columns in any order, `#` starting a comment line. One line per
period (or per period shared by several weekdays), term, holiday or make-up working day:

    type,name,weekday,number,start,end,follows
    类型,名称,星期,节次,开始,结束,按星期

    period,第1节,1-5,1,08:00,08:45,
    period,第1节,6,1,09:00,09:40,          (a Saturday of its own)
    term,第一学期,,,2025-09-01,2026-01-16,
    holiday,国庆节,,,2025-10-01,2025-10-08,
    workday,国庆调休,,,2025-09-28,,5       (a Sunday that follows Friday's periods)

`type` is period/节次, term/学期, holiday/假期 (寒假, 暑假, 节假日) or workday/调休 (补班);
`weekday` a number 1-7 (Monday 1), a name (周一, 星期五, Mon), a range `1-5` or `周一至周五`, or a list
`1;3;5` / `1、3、5`; a holiday's or workday's `end` may be left out for a single day.

An import replaces the school's whole timetable (its time zone stays): every line is checked first,
each error names its line and column (as the header spells it), and nothing is saved unless every
line is right; the provisioning import (central/provisioning.py) works the same way, and its file
decoding and problem type are reused here.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from campus.errors import ConfigError
from campus.i18n import lazy_gettext, message_of
from central import timetables as tts
from central.provisioning import CsvRecords, Header, ImportProblem, decode_csv
from central.registry import Registry

COLUMNS = ("type", "name", "weekday", "number", "start", "end", "follows")
CHINESE = dict(zip(COLUMNS, ("类型", "名称", "星期", "节次", "开始", "结束", "按星期"), strict=True))
# The timetable import's one header table (central/provisioning.py `Header`).
TIMETABLE_HEADER = Header(COLUMNS, CHINESE, ("type", "start"), {
    "kind": "type", "类别": "type", "名字": "name", "day": "weekday", "周几": "weekday",
    "period": "number", "第几节": "number", "开始时间": "start", "开始日期": "start", "结束时间": "end",
    "结束日期": "end", "调休按": "follows", "按": "follows", "按周几": "follows"})
_TYPES = {"period": "periods", "节次": "periods", "课节": "periods", "课": "periods", "上课": "periods",
          "term": "terms", "学期": "terms",
          "holiday": "holidays", "假期": "holidays", "放假": "holidays", "节假日": "holidays",
          "寒假": "holidays", "暑假": "holidays",
          "workday": "workdays", "调休": "workdays", "补班": "workdays", "补课": "workdays"}
MAX_ROWS = 2000


@dataclass
class TimetableImport:
    ok: bool = False
    rows: int = 0
    errors: list[ImportProblem] = field(default_factory=list)
    timetable: tts.Timetable | None = None


def parse_weekdays(value: str, line: int) -> list[int]:
    """`1-5`, `周一至周五`, `1;3;5`, `1、3`, `一,三` or one weekday: the ISO weekday numbers."""
    text = value.strip()
    for sep in ("；", "、", "，", ","):
        text = text.replace(sep, ";")
    days: list[int] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        for dash in ("至", "到", "~", "～", "—", "–"):
            part = part.replace(dash, "-")
        if "-" in part:
            a, _, b = part.partition("-")
            lo, hi = tts.parse_weekday(a, line, "weekday"), tts.parse_weekday(b, line, "weekday")
            if hi < lo:
                raise tts.TimetableError(line, "weekday", lazy_gettext("%(value)s: the range runs backwards",
                                                                       value=repr(value.strip())))
            days += range(lo, hi + 1)
        else:
            days.append(tts.parse_weekday(part, line, "weekday"))
    if not days:
        raise tts.TimetableError(line, "weekday", lazy_gettext("required for a period: 1-7, a range 1-5 or a "
                                                               "list 1;3;5"))
    if len(set(days)) != len(days):
        raise tts.TimetableError(line, "weekday", lazy_gettext("%(value)s names a weekday twice",
                                                               value=repr(value.strip())))
    return days


def parse(text: str, school: str, timezone: str = tts.DEFAULT_TIMEZONE) -> TimetableImport:
    """The file's timetable, or every problem in it (each line's first, then those between lines)."""
    report = TimetableImport()
    labels: dict[str, str] = {}  # column -> the header cell as the file spells it
    periods: list[tts.Period] = []
    ranges: list[tts.DateRange] = []
    records = CsvRecords(text, report.errors)
    header: list[str] | None = None
    for start, cells in records:
        if header is None:
            header, found, problems = TIMETABLE_HEADER.read(cells, start)
            labels.update(found)
            if problems:
                report.errors.extend(problems)
                return report
            continue
        if report.rows >= MAX_ROWS:
            report.errors.append(ImportProblem(start, "", lazy_gettext("more than %(max)s lines; is this a "
                                                                       "timetable?", max=MAX_ROWS)))
            return report
        report.rows += 1
        v = CsvRecords.values(start, cells, header)
        if isinstance(v, ImportProblem):
            report.errors.append(v)
            continue
        try:
            _row(start, v, periods, ranges)
        except tts.TimetableError as exc:
            report.errors.append(ImportProblem(start, labels.get(exc.field, exc.field), message_of(exc)))
    if records.finish(TIMETABLE_HEADER, lazy_gettext("no lines after the header")):
        return report
    # Between lines too, on the good lines of a bad file: everything is reported at once.
    tt = tts.Timetable(school, timezone, tuple(periods), tuple(ranges))
    for problem in tts.problems(tt):
        line = problem.where if isinstance(problem.where, int) else 0
        report.errors.append(ImportProblem(line, labels.get(problem.field, problem.field), problem.message))
    report.timetable = None if report.errors else tt
    report.errors.sort(key=lambda e: e.line)
    return report


def _row(line: int, v: dict[str, str], periods: list[tts.Period], ranges: list[tts.DateRange]) -> None:
    kind = _TYPES.get(v.get("type", "").lower())
    if kind is None:
        raise tts.TimetableError(line, "type", lazy_gettext(
            "%(value)s: must be period (节次), term (学期), holiday (假期) or workday (调休)",
            value=repr(v.get("type", "")[:20])))
    if kind == "periods":
        for key in ("follows",):
            if v.get(key):
                raise tts.TimetableError(line, key, lazy_gettext("only for a workday (调休)"))
        for key in ("number", "end"):
            if not v.get(key):
                raise tts.TimetableError(line, key, lazy_gettext("required for a period"))
        for day in parse_weekdays(v.get("weekday", ""), line):
            periods.append(tts.period_of(line, day, v["number"], v["start"], v["end"], v.get("name", "")))
        return
    for key in ("weekday", "number"):
        if v.get(key):
            raise tts.TimetableError(line, key, lazy_gettext("only for a period (节次)"))
    ranges.append(tts.range_of(line, kind, v.get("name", ""), v.get("start", ""), v.get("end") or v.get("start", ""),
                             v.get("follows") or None))


def import_csv(registry: Registry, school: str, data: bytes, by: str = "",
               timezone: str = tts.DEFAULT_TIMEZONE) -> TimetableImport:
    """Check the whole file, then replace the school's timetable with it, or change nothing. The file has no
    zone: the school keeps its own, and a school without a timetable gets `timezone` (the site's: a first
    import must not move its pages to another clock)."""
    try:
        text = decode_csv(data)
    except ConfigError as exc:
        return TimetableImport(errors=[ImportProblem(1, "", message_of(exc))])
    current = tts.load(registry, school)
    report = parse(text, school, current.timezone if current else timezone)
    if report.timetable is not None:
        report.timetable = tts.save(registry, report.timetable, by)
        report.ok = True
    return report


def to_csv(tt: tts.Timetable | None, chinese: bool = False) -> str:
    """The timetable as a file `parse` reads back (periods the same on several weekdays on one line)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(TIMETABLE_HEADER.names(chinese))
    if tt is None:
        return out.getvalue()
    words = {"periods": "节次", "terms": "学期", "holidays": "假期", "workdays": "调休"} if chinese else \
        {"periods": "period", "terms": "term", "holidays": "holiday", "workdays": "workday"}
    same: dict[tuple[int, str, str, str], list[int]] = {}
    for p in sorted(tt.periods, key=lambda p: (p.weekday, p.start)):
        same.setdefault((p.number, p.name, f"{p.start:%H:%M}", f"{p.end:%H:%M}"), []).append(p.weekday)
    for (number, name, start, end), days in sorted(same.items(), key=lambda kv: (kv[1][0], kv[0][2])):
        writer.writerow([words["periods"], name, _days(days), number, start, end, ""])
    for kind in ("terms", "holidays", "workdays"):
        for r in sorted(tt.of(kind), key=lambda r: r.first):
            writer.writerow([words[kind], r.name, "", "", r.first.isoformat(), r.last.isoformat(), r.follows or ""])
    return out.getvalue()


def _days(days: list[int]) -> str:
    if len(days) > 1 and days == list(range(days[0], days[-1] + 1)):
        return f"{days[0]}-{days[-1]}"
    return ";".join(str(d) for d in days)


EXAMPLE_CSV = """\
# 作息时间表 · school timetable: one line per period, term, holiday or make-up working day.
类型,名称,星期,节次,开始,结束,按星期
节次,第1节,1-5,1,08:00,08:45,
节次,第2节,1-5,2,08:55,09:40,
节次,第3节,1-5,3,10:00,10:45,
节次,第4节,1-5,4,10:55,11:40,
节次,第5节,1-5,5,14:00,14:45,
节次,第6节,1-4,6,14:55,15:40,
学期,第一学期,,,2025-09-01,2026-01-16,
学期,第二学期,,,2026-02-23,2026-07-03,
假期,中秋节·国庆节,,,2025-10-01,2025-10-08,
调休,国庆调休,,,2025-09-28,,5
调休,国庆调休,,,2025-10-11,,5
假期,清明节,,,2026-04-04,2026-04-06,
假期,劳动节,,,2026-05-01,2026-05-05,
"""
