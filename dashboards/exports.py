"""Downloads: CSV and XLSX files as spreadsheets on a Chinese school's Windows PC open them, made safe.

One place for every export (usage rate, energy, maintenance, a room's history, the provisioning files):
- CSV in UTF-8 with a byte-order mark (without it Excel reads UTF-8 as GBK on a Chinese Windows) and
  RFC 4180 line ends;
- a text cell that a spreadsheet would run as a formula (it starts with = + - @, a TAB or a CR: OWASP's
  "CSV injection") is written as text: in CSV with a leading apostrophe, in XLSX as a string cell. Names
  are typed by people (a room called "=HYPERLINK(…)" is one import away); numbers stay numbers;
- XLSX in openpyxl's write-only mode (`xlsx_file`): a month's room-days of a district are tens of
  thousands of rows, written as they come;
- a district's file is built in an anonymous temporary file and sent from it in chunks (`download`), its
  rows made lazily: the web process never holds the whole file, nor every row, at once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import quote

from flask import Response, make_response, request
from werkzeug.wsgi import wrap_file

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV = "text/csv"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CHUNK = 64 * 1024   # bytes a download sends at a time from its file
IN_MEMORY = 256 * 1024  # a file up to this size is built in memory, a larger one on disk (`tempfile`)
# What XML 1.0 cannot hold: openpyxl refuses the control characters (the whole file) and writes U+FFFE, U+FFFF
# and lone surrogates into a file no reader opens. Left out of an XLSX cell.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


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


def xlsx_file(sheets: Sequence[Sheet]) -> IO[bytes]:
    """A workbook of `sheets` in a temporary file at its start; every text a string cell, never a formula
    the spreadsheet runs. openpyxl's write-only mode: each sheet's rows go to a temporary file of its own as
    they come, read once, never all held."""
    from openpyxl import Workbook  # here: only these downloads need it

    out = _spool()
    book = Workbook(write_only=True)
    try:
        for spec in sheets:
            sheet = book.create_sheet(spec.title)
            for n, row in enumerate(spec.rows):  # row 0 is the header: no number formats
                sheet.append([_xlsx_cell(sheet, v, spec.formats.get(i) if n else None) for i, v in enumerate(row)])
            if spec.note:
                sheet.append([])
                sheet.append([_xlsx_cell(sheet, spec.note, None)])
        book.save(out)
    except BaseException:
        # A row source failed (the database): no half file is sent. The workbook is still saved, into the
        # file thrown away: openpyxl removes its sheets' temporary files only when it saves.
        with contextlib.suppress(Exception):
            book.save(out)
        out.close()
        raise
    out.seek(0)
    return out


def _xlsx_cell(sheet: Any, value: Any, number_format: str | None) -> Any:
    """A text as a string cell (openpyxl would make "=..." a formula), without the control characters XML 1.0
    cannot write (openpyxl refuses the whole file for one: a name holding one was a 500); a number with its
    column's format; anything else as it is."""
    from openpyxl.cell import WriteOnlyCell

    if isinstance(value, str):
        text = WriteOnlyCell(sheet, value=_NOT_XML.sub("", value))
        text.data_type = "s"
        return text
    if number_format is not None and value is not None:
        number = WriteOnlyCell(sheet, value=value)
        number.number_format = number_format
        return number
    return value


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
