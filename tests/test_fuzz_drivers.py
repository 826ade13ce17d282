"""Fuzzing the serial-line codecs: card-reader parsers, Samsung MDC and LG frame codecs.

Card readers (`tests/test_card_reader.py` already checks that the parsers
never raise on random chunks and that valid EM4100 frames survive chunking):
here, *chunking invariance* on arbitrary streams (the same bytes cut
differently give the same UIDs and the same counters), valid UID lines in
noise for the line parser, and `parse_uid_line` on arbitrary text.

Displays and DL/T 645 meters: `decode_frame`/`parse_reply`/`parse_command` raise only their
declared `MDCFrameError`/`LGFrameError`; a single corrupted byte in an MDC
frame is always detected; the splitters never raise, account for every byte
and give the same frames however the stream is cut.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from protocols import dlt645, lg_serial, samsung_mdc
from protocols.card_em4100 import EM4100Parser, xor_checksum
from protocols.card_line import LineParser, parse_uid_line
from protocols.serial_line import BadFrame
from tests.test_fuzz import fuzz_settings, only

# ------------------------------------------------------------------ helpers


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the (sorted, deduplicated) positions `cuts`."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


cut_lists = st.lists(st.integers(0, 10_000), max_size=12)


def em_frame(uid: bytes, crlf: str = "") -> bytes:
    body = uid.hex().upper() + f"{xor_checksum(uid):02X}"
    return b"\x02" + body.encode() + crlf.encode() + b"\x03"


em_pieces = st.one_of(
    st.binary(min_size=5, max_size=5).map(em_frame),
    st.tuples(st.binary(min_size=5, max_size=5), st.sampled_from(["\r\n", "\n", "\r"])).map(lambda t: em_frame(*t)),
    st.binary(max_size=12),
    st.sampled_from([b"\x02", b"\x03", b"\r", b"\n", b"\r\n", b"0", b"F", b"\x02" + b"0" * 12 + b"\x03"]),
    st.text("0123456789ABCDEFabcdefG\x02\x03\r\n", max_size=16).map(str.encode),
)
em_streams = st.lists(em_pieces, max_size=12).map(b"".join)

line_pieces = st.one_of(
    st.binary(max_size=10),
    st.sampled_from([b"\r", b"\n", b"\r\n", b" ", b":", b"-", b"\t", b"\x00", b"\x7f", b"\xff"]),
    st.text("0123456789ABCDEFabcdefxyz :-", max_size=20).map(str.encode),
    st.integers(0, 2**32).map(lambda n: str(n).encode()),
    st.binary(min_size=4, max_size=7).map(lambda b: b.hex().encode()),
)
line_streams = st.lists(line_pieces, max_size=12).map(b"".join)


def feed_all(parser: EM4100Parser | LineParser, chunks: list[bytes]) -> list[str]:
    out: list[str] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out


# ------------------------------------------------------------------ card readers


@fuzz_settings(300)
@given(em_streams, cut_lists)
def test_em4100_chunking_invariance(stream: bytes, cuts: list[int]) -> None:
    whole, pieces = EM4100Parser(), EM4100Parser()
    uids = whole.feed(stream)
    assert feed_all(pieces, chunked(stream, cuts)) == uids
    assert pieces.counts == whole.counts and pieces.pending == whole.pending
    whole.expire()
    pieces.expire()
    assert pieces.counts == whole.counts
    assert all(len(u) == 10 and u == u.upper() and int(u, 16) > 0 for u in uids)


@fuzz_settings(300)
@given(line_streams, cut_lists, st.sampled_from(["auto", "hex", "decimal"]), st.sampled_from(["big", "little"]))
def test_line_parser_chunking_invariance(stream: bytes, cuts: list[int], uid_format: str, order: str) -> None:
    whole, pieces = LineParser(uid_format, order), LineParser(uid_format, order)
    uids = whole.feed(stream)
    assert feed_all(pieces, chunked(stream, cuts)) == uids
    assert pieces.counts == whole.counts and pieces.pending == whole.pending
    whole.expire()
    pieces.expire()
    assert pieces.counts == whole.counts


def uid_spellings(uid: bytes) -> st.SearchStrategy[str]:
    """How line readers write `uid`: hex in either case with or without separators; 4 bytes also as decimal."""
    hex_forms = st.tuples(st.sampled_from(["", ":", "-", " "]), st.booleans()).map(
        lambda t: t[0].join(f"{b:02x}" if t[1] else f"{b:02X}" for b in uid))
    if len(uid) == 4:
        return hex_forms | st.just(f"{int.from_bytes(uid, 'big'):010d}")
    return hex_forms


@fuzz_settings(200)
@given(st.lists(st.tuples(st.binary(min_size=4, max_size=4) | st.binary(min_size=7, max_size=7), st.data()),
                min_size=1, max_size=6),
       st.lists(st.binary(max_size=6).map(lambda b: bytes(x for x in b if x not in (10, 13))), max_size=6),
       st.sampled_from([b"\r", b"\n", b"\r\n"]), cut_lists)
def test_line_uids_in_noise_lines_survive_any_chunking(cards: list[tuple[bytes, Any]], noise: list[bytes],
                                                       end: bytes, cuts: list[int]) -> None:
    lines, expected = [], []
    for i, (uid, data) in enumerate(cards):
        spelled = data.draw(uid_spellings(uid))
        if any(uid):
            expected.append(uid.hex().upper())
        else:
            event("all-zero uid (malformed)")
        lines.append(spelled.encode())
        if i < len(noise):
            lines.append(b"GARBAGE" + noise[i])  # never a UID, even when noise is empty
    stream = end + end.join(lines) + end
    parser = LineParser()
    assert feed_all(parser, chunked(stream, cuts)) == expected
    assert parser.counts["frames_ok"] == len(expected)


@fuzz_settings(300)
@given(st.text(max_size=40) | st.text("0123456789abcdefABCDEF:- \t\u0661\u00b2\uff11", max_size=24),
       st.sampled_from(["auto", "hex", "decimal"]), st.sampled_from(["big", "little"]))
def test_parse_uid_line_never_raises(text: str, uid_format: str, order: str) -> None:
    uid, verdict = parse_uid_line(text, uid_format, order)
    if uid is None:
        assert verdict in ("truncated", "malformed")
    else:
        assert verdict == "ok" and len(uid) in (8, 14) and uid == uid.upper() and int(uid, 16) > 0


@fuzz_settings(200)
@given(st.binary(min_size=4, max_size=4).filter(any) | st.binary(min_size=7, max_size=7).filter(any), st.data())
def test_parse_uid_line_reads_back_every_spelling(uid: bytes, data: st.DataObject) -> None:
    spelled = data.draw(uid_spellings(uid))
    assert parse_uid_line(f" {spelled}\t") == (uid.hex().upper(), "ok")


# ------------------------------------------------------------------ Samsung MDC

mdc_frames = st.builds(samsung_mdc.encode_frame, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=12))
mdc_replies = st.builds(samsung_mdc.encode_reply, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=8),
                        st.booleans())
mdc_noise = st.binary(max_size=10) | st.sampled_from([b"\xaa", b"\xaa\xff", b"\xaa\xff\x01\xf0", b"\xaa\x00\x00\x03"])
mdc_streams = st.lists(mdc_frames | mdc_replies | mdc_noise, max_size=8).map(b"".join)


@fuzz_settings(300)
@given(st.binary(max_size=40) | mdc_frames | mdc_replies)
def test_mdc_decode_frame_only_frame_error(raw: bytes) -> None:
    with only(samsung_mdc.MDCFrameError) as outcome:
        frame = samsung_mdc.decode_frame(raw)
    if outcome.ok:
        assert samsung_mdc.encode_frame(frame.command, frame.display_id, frame.data) == raw
        with only(samsung_mdc.MDCFrameError) as reply_outcome:
            reply = samsung_mdc.parse_reply(frame)
        if reply_outcome.ok:
            assert samsung_mdc.encode_reply(reply.display_id, reply.command, reply.values, reply.ack) == raw
            assert (reply.error_code is None) == reply.ack


@fuzz_settings(300)
@given(mdc_frames | mdc_replies, st.data())
def test_mdc_single_byte_corruption_is_always_detected(raw: bytes, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(raw) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
    with pytest.raises(samsung_mdc.MDCFrameError):
        samsung_mdc.decode_frame(raw[:i] + bytes([byte]) + raw[i + 1:])


def mdc_bytes(item: samsung_mdc.MDCFrame | samsung_mdc.MDCReply | BadFrame) -> bytes:
    if isinstance(item, BadFrame):
        return item.raw
    if isinstance(item, samsung_mdc.MDCReply):
        return samsung_mdc.encode_reply(item.display_id, item.command, item.values, item.ack)
    return samsung_mdc.encode_frame(item.command, item.display_id, item.data)


@fuzz_settings(300)
@given(st.binary(max_size=300) | mdc_streams, st.booleans())
def test_mdc_splitters_account_for_every_byte(stream: bytes, replies: bool) -> None:
    split = samsung_mdc.split_replies if replies else samsung_mdc.split_frames
    items, rest = split(stream)  # type: ignore[operator]
    assert b"".join(mdc_bytes(i) for i in items) + rest == stream
    assert len(rest) < samsung_mdc.MAX_FRAME
    if not replies:  # adjacent skipped spans are one BadFrame (split_replies adds BadFrames for non-replies)
        assert not any(isinstance(a, BadFrame) and isinstance(b, BadFrame) for a, b in itertools.pairwise(items))


def feed_mdc(stream: bytes, cuts: list[int]) -> list[Any]:
    buf, frames = b"", []
    for chunk in chunked(stream, cuts):
        items, buf = samsung_mdc.split_frames(buf + chunk)
        frames += [i for i in items if not isinstance(i, BadFrame)]
    return frames


@fuzz_settings(300)
@given(st.lists(st.tuples((mdc_frames | mdc_replies).filter(lambda f: b"\xaa" not in f[1:]),
                          st.binary(max_size=6).map(lambda b: b.replace(b"\xaa", b""))), max_size=6), cut_lists)
def test_mdc_frames_in_noise_without_headers_survive_any_chunking(parts: list[tuple[bytes, bytes]],
                                                                  cuts: list[int]) -> None:
    stream = b"".join(noise + frame for frame, noise in parts)
    expected = [samsung_mdc.decode_frame(frame) for frame, _ in parts]
    assert feed_mdc(stream, cuts) == expected


@fuzz_settings(200)
@given(mdc_streams, cut_lists)
def test_mdc_chunking_loses_no_frame(stream: bytes, cuts: list[int]) -> None:
    whole = [i for i in samsung_mdc.split_frames(stream)[0] if not isinstance(i, BadFrame)]
    assert feed_mdc(stream, cuts) == whole


# ------------------------------------------------------------------ LG

lg_replies = st.builds(lg_serial.encode_reply, st.sampled_from("abdefx"), st.integers(0, 255), st.booleans(),
                       st.sampled_from(["", "00", "01", "ff", "A0", "0a1b"]))
lg_commands = st.builds(lg_serial.encode_command, st.sampled_from(["ka", "kf", "ke", "xb", "zz"]),
                        st.integers(0, 255), st.sampled_from(["00", "ff", "A0", "01 02", "1e"]))


@fuzz_settings(200)
@given(st.binary(max_size=120) | st.lists(lg_replies | st.binary(max_size=8), max_size=6).map(b"".join))
def test_lg_split_replies_never_raises(stream: bytes) -> None:
    items, rest = lg_serial.split_replies(stream)
    assert len(rest) <= lg_serial.MAX_REPLY
    for item in items:
        if isinstance(item, lg_serial.LGReply):
            assert len(item.command2) == 1 and 0 <= item.set_id <= 255 and item.data == item.data.lower()
            assert all(c in "0123456789abcdef" for c in item.data)


@fuzz_settings(300)
@given(st.lists(st.tuples(lg_replies, st.text(" \r\n\tgz#!", max_size=4).map(str.encode)), max_size=6), cut_lists)
def test_lg_replies_survive_any_chunking(parts: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    stream = b"".join(noise + reply for reply, noise in parts)
    buf, got = b"", []
    for chunk in chunked(stream, cuts):
        items, buf = lg_serial.split_replies(buf + chunk)
        got += [i for i in items if isinstance(i, lg_serial.LGReply)]
    assert got == [lg_serial.split_replies(reply)[0][0] for reply, _ in parts]


@fuzz_settings(300)
@given(st.binary(max_size=40) | lg_commands, st.data())
def test_lg_parse_command_only_frame_error(line: bytes, data: st.DataObject) -> None:
    if line and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(line) - 1))
        line = line[:i] + bytes([data.draw(st.integers(0, 255))]) + line[i + 1:]
    with only(lg_serial.LGFrameError) as outcome:
        command = lg_serial.parse_command(line)
    if outcome.ok:
        again = lg_serial.encode_command(command.command, command.set_id, command.data)
        assert lg_serial.parse_command(again) == command


@fuzz_settings(200)
@given(st.binary(max_size=200) | st.lists(lg_commands | st.binary(max_size=8), max_size=6).map(b"".join))
def test_lg_split_commands_never_raises(stream: bytes) -> None:
    items, rest = lg_serial.split_commands(stream)
    assert len(rest) <= lg_serial.MAX_COMMAND and b"\r" not in rest
    assert all(isinstance(i, lg_serial.LGCommand | BadFrame) for i in items)


# ------------------------------------------------------------------ regressions for the bugs found


def test_d1_mdc_reply_behind_a_stray_header_survives_a_cut() -> None:
    real = samsung_mdc.encode_reply(1, 0x11, b"\x01")
    stream = b"\xaa\x00\x00\x03" + real  # a header whose 3-byte "frame" ends inside the real reply
    whole = [i for i in samsung_mdc.split_frames(stream)[0] if not isinstance(i, BadFrame)]
    assert whole == [samsung_mdc.decode_frame(real)]
    assert feed_mdc(stream, [8]) == whole  # the first read ends 4 bytes into the real reply


# ------------------------------------------------------------------ DL/T 645 meters

dlt_addresses = st.sampled_from(["123456789012", "000000000001", dlt645.BROADCAST]) \
    | st.integers(0, 10**12 - 1).map(lambda n: f"{n:012d}")
dlt_frames = st.builds(dlt645.encode_frame, dlt_addresses, st.integers(0, 255), st.binary(max_size=16), st.booleans())
dlt_streams = st.lists(dlt_frames | st.binary(max_size=8) | st.sampled_from([b"\x68", b"\xfe" * 4, b"\x16"]),
                       max_size=8).map(b"".join)


def feed_dlt(stream: bytes, cuts: list[int]) -> list[Any]:
    buf, frames = b"", []
    for chunk in chunked(stream, cuts):
        items, buf = dlt645.split_frames(buf + chunk)
        frames += [i for i in items if not isinstance(i, BadFrame)]
    return frames


@fuzz_settings(300)
@given(st.binary(max_size=300) | dlt_streams)
def test_dlt645_decode_raises_only_its_frame_error_and_the_splitter_never_raises(raw: bytes) -> None:
    with only(dlt645.DLT645FrameError) as outcome:
        frame = dlt645.decode_frame(raw)
    if outcome.ok:
        assert dlt645.encode_frame(frame.address, frame.control, frame.data, preamble=False) == raw.lstrip(b"\xfe")
    items, rest = dlt645.split_frames(raw)
    assert len(rest) < dlt645.MIN_FRAME + 255
    assert not any(isinstance(a, BadFrame) and isinstance(b, BadFrame) for a, b in itertools.pairwise(items))
    for item in items:
        assert isinstance(item, dlt645.Frame) or item.raw in raw


@fuzz_settings(200)
@given(dlt_frames.map(lambda f: f.lstrip(b"\xfe")), st.data())
def test_dlt645_single_byte_corruption_is_always_detected(raw: bytes, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(raw) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
    with pytest.raises(dlt645.DLT645FrameError):
        dlt645.decode_frame(raw[:i] + bytes([byte]) + raw[i + 1:])


@fuzz_settings(300)
@given(st.lists(st.tuples(dlt_frames.filter(lambda f: b"\x68" not in f.lstrip(b"\xfe")[1:7]
                                           and b"\x68" not in f.lstrip(b"\xfe")[8:]),
                          st.binary(max_size=6).map(lambda b: b.replace(b"\x68", b""))), max_size=6), cut_lists)
def test_dlt645_frames_in_noise_survive_any_chunking(parts: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    stream = b"".join(noise + frame for frame, noise in parts)
    assert feed_dlt(stream, cuts) == [dlt645.decode_frame(frame) for frame, _ in parts]


@fuzz_settings(200)
@given(dlt_streams, cut_lists)
def test_dlt645_chunking_loses_no_frame(stream: bytes, cuts: list[int]) -> None:
    whole = [i for i in dlt645.split_frames(stream)[0] if not isinstance(i, BadFrame)]
    assert feed_dlt(stream, cuts) == whole


@fuzz_settings(300)
@given(st.sampled_from(list(dlt645.DATA_ITEMS.values())), st.data())
def test_dlt645_values_round_trip_and_any_bytes_decode_or_raise_its_error(item: dlt645.DataItem,
                                                                        data: st.DataObject) -> None:
    raw = data.draw(st.binary(min_size=item.size, max_size=item.size))
    with only(dlt645.DLT645FrameError) as outcome:
        value = dlt645.decode_value(item, raw)
    if outcome.ok:
        assert abs(value) <= item.largest
        assert dlt645.decode_value(item, dlt645.encode_value(item, value)) == value
