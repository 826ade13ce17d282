"""The district-wide downloads (dashboards/exports.py): the XLSX holds the sheets, cells, types and number
formats of the rows it was given, text that looks like a formula stays text, a character XML cannot hold does
not cost the file, the downloads hold the reports' rows, and a download is sent from its temporary file in
chunks with its length and its (Chinese) file name.

The rows are the week of tests/test_energy.py (its `app`: three metered rooms, a timetable, projector hours)."""

from __future__ import annotations

import csv
import io
import tempfile
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from openpyxl import load_workbook

from central import energy, maintenance, usage
from dashboards.context import central
from dashboards.exports import CHUNK, CSV, XLSX, Sheet, csv_file, csv_text, download, xlsx_bytes, xlsx_file
from tests.test_energy import TARIFF, app, get  # noqa: F401 - a fixture

WEEK = (date(2025, 9, 8), date(2025, 9, 14))


def cells(data: bytes) -> list[tuple[str, list[list[tuple[Any, str, str]]]]]:
    """Every sheet (in order) and every cell of it as openpyxl reads it: value, type, number format."""
    book = load_workbook(io.BytesIO(data))
    return [(ws.title, [[(c.value, c.data_type, c.number_format) for c in row] for row in ws.iter_rows()])
            for ws in book.worksheets]


HOSTILE = ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tTAB", "化学实验室（一）", " spaced ", "a&b<c>\"'",
           "line\nbreak", ""]


def sample_sheets() -> list[Sheet]:
    rows: list[list[Any]] = [["name", "kWh", "share", "day", "when", "flag", "count"]]
    for k, name in enumerate(HOSTILE):
        rows.append([name, round(1.5 * k - 3, 3), None if k % 3 == 0 else k / 7, date(2025, 9, 8 + k % 7),
                     datetime(2025, 9, 8, k, 30, 15), k % 2 == 0, 10**k])
    rows.append(["nan in a formatted column", 1.0, float("nan"), None, None, None, -0])
    rows.append([time(8, 45), timedelta(hours=30, minutes=5)])
    return [Sheet("energy", rows, formats={2: "0.0%", 1: "0.000"}, note="made 2025-09-15 12:00"),
            Sheet("days", [["date", "kWh"], *([date(2025, 9, d), d * 0.1] for d in range(8, 15))]),
            Sheet("empty", [["only a header"]])]


def test_the_xlsx_holds_each_row_as_its_cells() -> None:
    got = cells(xlsx_bytes(sample_sheets()))
    assert [t for t, _ in got] == ["energy", "days", "empty"]
    energy_sheet, days = dict(got)["energy"], dict(got)["days"]
    # The header's texts, with no number formats even over formatted columns.
    assert energy_sheet[0] == [(v, "s", "General") for v in ("name", "kWh", "share", "day", "when", "flag", "count")]
    # Text that a spreadsheet would run stays a string cell, every other text too (an empty one is a blank cell).
    assert [row[0] for row in energy_sheet[1:len(HOSTILE) + 1]] == [
        (v, "s", "General") if v else (None, "inlineStr", "General") for v in HOSTILE]
    # Numbers stay numbers with their column's format; dates and times are dates; None is an empty cell.
    assert energy_sheet[2][1] == (-1.5, "n", "0.000")
    assert energy_sheet[2][2] == (float(f"{1 / 7:.16g}"), "n", "0.0%")  # openpyxl writes 16 digits
    assert energy_sheet[1][2] == (None, "n", "General")
    assert energy_sheet[1][3] == (datetime(2025, 9, 8), "d", "yyyy-mm-dd")
    assert energy_sheet[2][4] == (datetime(2025, 9, 8, 1, 30, 15), "d", "yyyy-mm-dd h:mm:ss")
    assert energy_sheet[1][5] == (True, "b", "General") and energy_sheet[4][6] == (1000, "n", "General")
    assert energy_sheet[len(HOSTILE) + 1][2] == (None, "n", "0.0%")  # a spreadsheet has no NaN
    # The note two rows below the last, a blank row between.
    assert all(c[0] is None for c in energy_sheet[-2])
    assert energy_sheet[-1][0] == ("made 2025-09-15 12:00", "s", "General")
    assert days[1] == [(datetime(2025, 9, 8), "d", "yyyy-mm-dd"), (0.8, "n", "General")]
    assert dict(got)["empty"] == [[("only a header", "s", "General")]]


def test_characters_xml_cannot_hold_are_left_out_of_their_cell() -> None:
    """openpyxl refuses the whole file for a control character (IllegalCharacterError: a 500 for a room name
    holding one) and writes U+FFFE or a lone surrogate into a file no reader opens: each is dropped from its
    cell. A CR reads back as a LF, as XML has it."""
    got = cells(xlsx_bytes([Sheet("x", [["\r=1+1", "bell\x07 and \x00nul", "\ufffe", "half\ud800", "化学"]])]))
    assert got == [("x", [[("\n=1+1", "s", "General"), ("bell and nul", "s", "General"),
                           (None, "inlineStr", "General"), ("half", "s", "General"), ("化学", "s", "General")]])]


def test_a_row_source_that_fails_fails_the_file() -> None:
    """A table's rows come from the database as the file is written: a failure half-way is the caller's
    error (a StoreError: the app's 503), never a file that looks whole."""
    def rows() -> Any:
        yield ["room"]
        yield ["101"]
        raise RuntimeError("the database went away")

    left = set(Path(tempfile.gettempdir()).glob("openpyxl.*"))
    with pytest.raises(RuntimeError, match="went away"):
        xlsx_file([Sheet("x", rows())])
    # openpyxl keeps a sheet's rows in a temporary file it removes only when the workbook is saved.
    assert set(Path(tempfile.gettempdir()).glob("openpyxl.*")) == left
    with pytest.raises(RuntimeError, match="went away"):
        csv_file(rows())


def test_the_csv_file_is_the_csv_text_with_a_bom_and_inert_formulas() -> None:
    rows = [["room", "kWh", "share"], ["=HYPERLINK(\"http://x\")", 1.5, 0.25], ["@SUM(A1)", -2.0, None],
            ["化学实验室（一）", 10**6, 1e-7]]
    with csv_file(iter(rows)) as f:
        data = f.read()
    assert data.decode("utf-8") == csv_text(rows) == (
        "\ufeffroom,kWh,share\r\n\"'=HYPERLINK(\"\"http://x\"\")\",1.5,0.25\r\n'@SUM(A1),-2,\r\n化学实验室（一）,1000000,1e-07\r\n")


def test_a_file_is_sent_in_chunks_with_its_length_and_closed(app) -> None:  # noqa: F811 - the fixture
    rows = [["room", "kWh"], *([f"room {k}", k * 0.001] for k in range(30_000))]
    with app.test_request_context("/health/energy.xlsx"):
        body = xlsx_file([Sheet("energy", iter(rows))])
        expected = body.read()
        body.seek(0)
        resp = download(body, "能耗-2025-W37.xlsx", XLSX)
        chunks = list(resp.response)
        resp.close()
    assert len(chunks) > 1 and all(len(c) <= CHUNK for c in chunks) and b"".join(chunks) == expected
    assert body.closed  # the temporary file goes with the response
    assert resp.content_length == len(expected) and resp.mimetype == XLSX
    assert resp.headers["Content-Disposition"] == f"attachment; filename*=UTF-8''{quote('能耗-2025-W37.xlsx')}"
    assert resp.headers["Cache-Control"] == "no-store"
    assert dict(cells(expected))["energy"][30_000][:2] == [("room 29999", "s", "General"), (29.999, "n", "General")]


def test_the_downloads_hold_what_the_reports_say(app) -> None:  # noqa: F811 - the fixture
    """Each district-wide download holds the report's rows as the views built them before (lists of every row,
    now made lazily): the same sheets and cells; the note's time is the download's own."""
    from dashboards.energy import maintenance_table
    from dashboards.energy import report_table as energy_table
    from dashboards.timetables import report_table as usage_table

    c = central(app)
    resp = get(app, "/health/energy.xlsx?week=2025-W37")
    assert resp.status_code == 200 and resp.headers["Content-Length"] == str(len(resp.data))
    got = cells(resp.data)
    note = got[0][1][-1][0][0]
    assert note.startswith("2025-09-08 to 2025-09-14; 0.5 yuan per kWh")
    rep = energy.report(c.db, *WEEK, tariff=TARIFF)
    with app.test_request_context():
        days = [["date", "kWh", "kWh outside timetable", "yuan"],
                *([d.day, round(d.kwh, 3), None if d.off_kwh is None else round(d.off_kwh, 3), rep.yuan(d.kwh)]
                  for d in rep.days)]
        room_days = [["date", "school", "building", "room", "gateway", "kWh", "kWh outside timetable"],
                     *([d, s, b, r, gw, round(k, 3), None if o is None else round(o, 3)]
                       for d, s, b, r, gw, k, o in energy.room_days(c.db, *WEEK))]
        table = [list(row) for row in energy_table(rep)]
        assert got == cells(xlsx_bytes([Sheet("energy", table, note=note), Sheet("days", days),
                                            Sheet("room days", room_days)]))
        assert len(room_days) == 1 + 3 * 7 and len(table) == 2 + 2 + 3 + 3
        csv_resp = get(app, "/health/energy.csv?week=2025-W37")
        assert csv_resp.data.decode("utf-8") == csv_text(table)
        assert csv_resp.headers["Content-Length"] == str(len(csv_resp.data)) and csv_resp.mimetype == CSV

        resp = get(app, "/health/usage-rate.xlsx?week=2025-W37")
        got = cells(resp.data)
        report = usage.usage_rate(c.registry, c.ledger, *WEEK)
        table = [list(row) for row in usage_table(report)]
        days = [["date", "class periods", "periods used", "usage rate"],
                *([d.day, d.periods, d.used, d.rate] for d in report.days)]
        note = got[0][1][-1][0][0]
        assert got == cells(xlsx_bytes([Sheet("usage rate", table, formats={8: "0.0%"}, note=note),
                                            Sheet("days", days)]))
        assert [r[0] for r in table] == ["level", "district", "school", "school", "room", "room", "room"]
        four = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v)  # noqa: E731
        assert get(app, "/health/usage-rate.csv?week=2025-W37").data.decode("utf-8") == csv_text(table, cell=four)

        resp = get(app, "/health/maintenance.xlsx?within=5")
        got = cells(resp.data)
        table = [list(row) for row in maintenance_table(maintenance.parts(c.db, c.store, within_weeks=5))]
        assert got == cells(xlsx_bytes([Sheet("maintenance", table, note=got[0][1][-1][0][0])]))
        assert len(table) == 4
        assert get(app, "/health/maintenance.csv?within=5").data.decode("utf-8") == csv_text(table)


def test_a_download_is_streamed_with_its_chinese_name(app) -> None:  # noqa: F811 - the fixture
    client = app.test_client()
    resp = client.get("/health/energy.xlsx?week=2025-W37&school=s1&building=实验楼",
                      headers={"Authorization": f"Bearer {app.tokens['facility']}"}, buffered=False)
    try:
        assert resp.status_code == 200 and resp.mimetype == XLSX
        assert resp.headers["Content-Disposition"] == (
            "attachment; filename*=UTF-8''" + quote("energy-2025-W37-s1-实验楼.xlsx"))
        body = b"".join(resp.response)
        assert int(resp.headers["Content-Length"]) == len(body) and resp.headers["Cache-Control"] == "no-store"
    finally:
        resp.close()
    sheet = dict(cells(body))["energy"]
    assert sheet[1][:6] == [("district", "s", "General"), *[(None, "inlineStr", "General")] * 4, (0, "n", "General")]
    text = get(app, "/health/maintenance.csv?within=5&school=s1").data.decode("utf-8")
    assert next(csv.reader(io.StringIO(text.lstrip("\ufeff"))))[0] == "school"
