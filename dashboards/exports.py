"""Downloads: CSV and XLSX files as spreadsheets on a Chinese school's Windows PC open them, made safe.

One place for every export (usage rate, energy, maintenance, a room's history, the provisioning files):
- CSV in UTF-8 with a byte-order mark (without it Excel reads UTF-8 as GBK on a Chinese Windows) and
  RFC 4180 line ends;
- a text cell that a spreadsheet would run as a formula (it starts with = + - @, a TAB or a CR: OWASP's
  "CSV injection") is written as text: in CSV with a leading apostrophe, in XLSX as a string cell. Names
  are typed by people (a room called "=HYPERLINK(…)" is one import away); numbers stay numbers;
- XLSX in openpyxl's streaming mode: a month's room-days of a district are tens of thousands of rows.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from flask import Response, make_response

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV = "text/csv"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: str) -> str:
    """`value` as a CSV cell no spreadsheet runs as a formula."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _plain(value: Any) -> Any:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else value


def csv_text(rows: Iterable[Sequence[Any]], cell: Callable[[Any], Any] = _plain) -> str:
    """The CSV of `rows`; `cell` writes a non-text value (a float as `%g` unless the caller says)."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    for row in rows:
        writer.writerow([spreadsheet_text(v) if isinstance(v, str) else cell(v) for v in row])
    return out.getvalue()


@dataclass
class Sheet:
    title: str
    rows: Iterable[Sequence[Any]]
    formats: dict[int, str] = field(default_factory=dict)  # column index -> number format ("0.0%")
    note: str = ""  # a line below the table: what the figures mean, when they were made


def xlsx_bytes(sheets: Sequence[Sheet]) -> bytes:
    """A workbook of `sheets`; every text a string cell, never a formula the spreadsheet runs."""
    from openpyxl import Workbook  # here: only these downloads need it
    from openpyxl.cell import WriteOnlyCell

    book = Workbook(write_only=True)
    for sheet_spec in sheets:
        sheet = book.create_sheet(sheet_spec.title)

        def cell(value: Any, column: int, sheet: Any = sheet, formats: dict[int, str] = sheet_spec.formats) -> Any:
            if isinstance(value, str):
                text = WriteOnlyCell(sheet, value=value)
                text.data_type = "s"
                return text
            if column in formats and value is not None:
                number = WriteOnlyCell(sheet, value=value)
                number.number_format = formats[column]
                return number
            return value

        for n, row in enumerate(sheet_spec.rows):  # row 0 is the header: no number formats
            sheet.append([cell(v, i if n else -1) for i, v in enumerate(row)])
        if sheet_spec.note:
            sheet.append([])
            sheet.append([cell(sheet_spec.note, -1)])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def download(body: bytes | str, filename: str, mimetype: str) -> Response:
    """`body` as an attachment named `filename`, kept by no cache: exports hold what only this account may
    see. The name in UTF-8 (RFC 6266's filename*), and as plain `filename` too when it is plain ASCII, for
    tools that read only that (curl -J)."""
    resp = make_response(body)
    resp.mimetype = mimetype
    plain = f'filename="{filename}"; ' if _PLAIN_NAME.fullmatch(filename) else ""
    resp.headers["Content-Disposition"] = f"attachment; {plain}filename*=UTF-8''{quote(filename)}"
    resp.headers["Cache-Control"] = "no-store"
    return resp
