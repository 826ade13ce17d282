"""Downloads: CSV and XLSX files as spreadsheets on a Chinese school's Windows PC open them, made safe.

One place for every export (usage rate, energy, maintenance, a room's history, the provisioning files):
- CSV in UTF-8 with a byte-order mark (without it Excel reads UTF-8 as GBK on a Chinese Windows) and
  RFC 4180 line ends;
- a text cell that a spreadsheet would run as a formula (it starts with = + - @, a TAB or a CR: OWASP's
  "CSV injection") is written as text: in CSV with a leading apostrophe, in XLSX as a string cell. Names
  are typed by people (a room called "=HYPERLINK(…)" is one import away); numbers stay numbers;
- XLSX written here as it streams (`xlsx_file`): each row's XML as it comes, straight into the ZIP's
  deflate. A district's file is tens of thousands of rows: openpyxl's write-only mode built an element
  tree per cell (7 s of CPU for a fortnight of 10,000 rooms, /work/helpers/exports-10k_bench.md), the
  same cells, styles and sheets are a few string formats per row here. openpyxl reads them back in the
  tests (tests/test_exports.py compares every cell with what openpyxl's writer makes of the same rows);
- a district's file is built in an anonymous temporary file and sent from it in chunks (`download`), its
  rows made lazily: the web process never holds the whole file, nor every row, at once.
"""

from __future__ import annotations

import csv
import io
import math
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import IO, Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from flask import Response, make_response, request
from werkzeug.wsgi import wrap_file

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV = "text/csv"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CHUNK = 64 * 1024   # bytes a download sends at a time from its file
IN_MEMORY = 256 * 1024  # a file up to this size is built in memory, a larger one on disk (`tempfile`)


def spreadsheet_text(value: str) -> str:
    """`value` as a CSV cell no spreadsheet runs as a formula."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _plain(value: Any) -> Any:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else value


def _spool() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=IN_MEMORY, prefix="campus-export-")


def csv_file(rows: Iterable[Sequence[Any]], cell: Callable[[Any], Any] = _plain) -> IO[bytes]:
    """The CSV of `rows` (see `csv_text`) in a temporary file at its start: the rows written as they come."""
    out = _spool()
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)  # type: ignore[arg-type]
    try:
        text.write("\ufeff")
        writer = csv.writer(text, lineterminator="\r\n")
        for row in rows:
            writer.writerow([spreadsheet_text(v) if isinstance(v, str) else cell(v) for v in row])
        text.flush()
        text.detach()
    except BaseException:
        out.close()  # a row source failed (the database): no half file left behind
        raise
    out.seek(0)
    return out


def csv_text(rows: Iterable[Sequence[Any]], cell: Callable[[Any], Any] = _plain) -> str:
    """The CSV of `rows`; `cell` writes a non-text value (a float as `%g` unless the caller says)."""
    with csv_file(rows, cell) as f:
        return f.read().decode("utf-8")


@dataclass
class Sheet:
    title: str
    rows: Iterable[Sequence[Any]]
    formats: dict[int, str] = field(default_factory=dict)  # column index -> number format ("0.0%")
    note: str = ""  # a line below the table: what the figures mean, when they were made


# ---------------------------------------------------------------- XLSX

_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_DECL = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
# XML 1.0 has no way to write these: openpyxl refused the whole file (IllegalCharacterError); they are left
# out of the cell. A CR is written as a character reference, or a reader would see it as a LF.
_TEXT = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;", "\ufffe": None, "\uffff": None,
                       **{c: None for c in (*range(0, 9), 11, 12, *range(14, 32))}})
_EPOCH = datetime(1899, 12, 30)  # Excel's day 0 (the 1900 date system, as openpyxl writes it)
# openpyxl's number formats for its date and time types, so a file reads back as it did.
_DATE_FORMATS = ((datetime, "yyyy-mm-dd h:mm:ss"), (date, "yyyy-mm-dd"), (time, "h:mm:ss"),
                 (timedelta, "[hh]:mm:ss"))


def _column(n: int) -> str:
    letters = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        letters = chr(65 + r) + letters
    return letters


def _serial(value: date | time | timedelta) -> float:
    """A date or time as Excel's serial day number (what openpyxl writes for it)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            raise TypeError("a spreadsheet has no time zones: give a naive local time")
        delta = value - _EPOCH
    elif isinstance(value, date):
        return float((value - _EPOCH.date()).days)
    elif isinstance(value, time):
        delta = timedelta(hours=value.hour, minutes=value.minute, seconds=value.second,
                          microseconds=value.microsecond)
    else:
        delta = value
    return delta.days + (delta.seconds + delta.microseconds / 1e6) / 86400


class _Styles:
    """The workbook's number formats, each a cell style (`s="N"`); style 0 is the default (General)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def of(self, number_format: str) -> int:
        if number_format not in self.index:
            self.index[number_format] = len(self.index) + 1
        return self.index[number_format]

    def xml(self) -> str:
        fmts = "".join(f'<numFmt numFmtId="{163 + i}" formatCode={quoteattr(f)}/>' for f, i in self.index.items())
        xfs = "".join(f'<xf numFmtId="{163 + i}" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
                      for i in self.index.values())
        return (f'{_DECL}<styleSheet xmlns="{_MAIN}">'
                + (f'<numFmts count="{len(self.index)}">{fmts}</numFmts>' if self.index else "")
                + '<fonts count="1"><font><sz val="11"/><name val="Calibri"/><family val="2"/></font></fonts>'
                '<fills count="2"><fill><patternFill patternType="none"/></fill>'
                '<fill><patternFill patternType="gray125"/></fill></fills>'
                '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
                '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
                f'<cellXfs count="{len(self.index) + 1}"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
                f'{xfs}</cellXfs><cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
                '</styleSheet>')


def _cell(ref: str, value: Any, number_format: str | None, styles: _Styles) -> str:
    """One `<c>` element ("" for an empty cell): text as an inline string, never a formula; a number or a
    date with its number format (`number_format`: the column's, None for none)."""
    if isinstance(value, str):
        text = value.translate(_TEXT)
        if not text:
            return f'<c r="{ref}" t="inlineStr"/>'  # as openpyxl: an empty text is a blank cell
        space = ' xml:space="preserve"' if value[:1].isspace() or value[-1:].isspace() else ""
        return f'<c r="{ref}" t="inlineStr"><is><t{space}>{text}</t></is></c>'
    if value is None:
        return ""
    if isinstance(value, bool):
        return f'<c r="{ref}" t="b"><v>{int(value)}</v></c>'
    if isinstance(value, (date, time, timedelta)):
        fmt = number_format or next(f for t, f in _DATE_FORMATS if isinstance(value, t))
        return f'<c r="{ref}" s="{styles.of(fmt)}" t="n"><v>{_serial(value):.16g}</v></c>'
    if isinstance(value, (int, float, Decimal)):
        style = f' s="{styles.of(number_format)}"' if number_format else ""
        if isinstance(value, float) and not math.isfinite(value):
            return f'<c r="{ref}"{style}/>'  # as openpyxl: a spreadsheet has no NaN or infinity
        # 16 significant digits as openpyxl wrote them (the files read back as they did; Excel shows 15).
        number = f"{value:.16g}" if isinstance(value, float) else str(value)
        # `t="n"` is the default, written as openpyxl wrote it: the sheet deflates ~7% smaller with it.
        return f'<c r="{ref}"{style} t="n"><v>{number}</v></c>'
    raise TypeError(f"a spreadsheet cell cannot hold {type(value).__name__}")


def _sheet_xml(spec: Sheet, styles: _Styles) -> Iterable[str]:
    """The worksheet's XML in pieces of a few hundred rows; row 1 is the header (no number formats), the
    note two rows below the last (a blank row between), as openpyxl's `append` of [] and [note] put it."""
    yield f'{_DECL}<worksheet xmlns="{_MAIN}"><sheetData>'
    columns: list[str] = []
    formats: list[str | None] = []
    lines: list[str] = []
    n = 0
    for n, row in enumerate(spec.rows, 1):
        while len(columns) < len(row):
            columns.append(_column(len(columns)))
            formats.append(spec.formats.get(len(formats)))
        cells = "".join([_cell(f"{columns[i]}{n}", v, formats[i] if n > 1 else None, styles)
                         for i, v in enumerate(row)])
        lines.append(f'<row r="{n}">{cells}</row>')
        if len(lines) >= 500:
            yield "".join(lines)
            lines.clear()
    if spec.note:
        lines.append(f'<row r="{n + 1}"></row><row r="{n + 2}">{_cell(f"A{n + 2}", spec.note, None, styles)}</row>')
    yield "".join(lines)
    yield "</sheetData></worksheet>"


def xlsx_file(sheets: Sequence[Sheet]) -> IO[bytes]:
    """A workbook of `sheets` in a temporary file at its start; every text a string cell, never a formula
    the spreadsheet runs. Each sheet's rows are read once, as they come, and deflated as they are written."""
    out = _spool()
    try:
        _write_book(out, sheets)
    except BaseException:
        out.close()  # a row source failed (the database): no half file left behind
        raise
    out.seek(0)
    return out


def _write_book(out: IO[bytes], sheets: Sequence[Sheet]) -> None:
    styles = _Styles()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as book:
        for k, spec in enumerate(sheets, 1):
            with book.open(f"xl/worksheets/sheet{k}.xml", "w") as part:
                for piece in _sheet_xml(spec, styles):
                    part.write(piece.encode("utf-8", "replace"))
        names = "".join(f'<sheet name={quoteattr(spec.title)} sheetId="{k}" r:id="rId{k}"/>'
                        for k, spec in enumerate(sheets, 1))
        book.writestr("xl/workbook.xml", f'{_DECL}<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><sheets>{names}'
                      '</sheets></workbook>')
        rels = "".join(f'<Relationship Id="rId{k}" Type="{_REL}/worksheet" Target="worksheets/sheet{k}.xml"/>'
                       for k in range(1, len(sheets) + 1))
        book.writestr("xl/_rels/workbook.xml.rels", f'{_DECL}<Relationships xmlns="{_PKG_REL}">{rels}'
                      f'<Relationship Id="rId{len(sheets) + 1}" Type="{_REL}/styles" Target="styles.xml"/>'
                      '</Relationships>')
        book.writestr("xl/styles.xml", styles.xml())
        book.writestr("_rels/.rels", f'{_DECL}<Relationships xmlns="{_PKG_REL}"><Relationship Id="rId1" '
                      f'Type="{_REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>')
        kind = "application/vnd.openxmlformats-officedocument.spreadsheetml"
        overrides = "".join(f'<Override PartName="/xl/worksheets/sheet{k}.xml" ContentType="{kind}.worksheet+xml"/>'
                            for k in range(1, len(sheets) + 1))
        book.writestr("[Content_Types].xml", f'{_DECL}<Types xmlns="http://schemas.openxmlformats.org/package/2006/'
                      'content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
                      'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
                      f'<Override PartName="/xl/workbook.xml" ContentType="{kind}.sheet.main+xml"/>'
                      f'<Override PartName="/xl/styles.xml" ContentType="{kind}.styles+xml"/>{overrides}</Types>')


def xlsx_bytes(sheets: Sequence[Sheet]) -> bytes:
    """The workbook of `xlsx_file` as bytes (a small file, or a test)."""
    with xlsx_file(sheets) as f:
        return f.read()


def download(body: bytes | str | IO[bytes], filename: str, mimetype: str) -> Response:
    """`body` as an attachment named `filename`, kept by no cache: exports hold what only this account may
    see. The name in UTF-8 (RFC 6266's filename*), and as plain `filename` too when it is plain ASCII, for
    tools that read only that (curl -J). A file (`csv_file`, `xlsx_file`: at its start) is sent from it
    `CHUNK` bytes at a time with its Content-Length, and closed (its disk space freed) when the response is."""
    if isinstance(body, (bytes, str)):
        resp = make_response(body)
    else:
        size = body.seek(0, io.SEEK_END)
        body.seek(0)
        resp = Response(wrap_file(request.environ, body, CHUNK), direct_passthrough=True)
        resp.content_length = size
    resp.mimetype = mimetype
    plain = f'filename="{filename}"; ' if _PLAIN_NAME.fullmatch(filename) else ""
    resp.headers["Content-Disposition"] = f"attachment; {plain}filename*=UTF-8''{quote(filename)}"
    resp.headers["Cache-Control"] = "no-store"
    return resp
