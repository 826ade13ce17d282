"""The gateway's own storage: is the data directory usable, is the outbox file sound, is the disk full.

A gateway keeps its outbox on an SD card that loses power without warning.
Three things go wrong there, and none of them may stop a gateway (a
supervisor restarting an agent that exits with a traceback only loops):

- **The data directory cannot be used** (a file in its place, a read-only
  mount, no permission): nothing can be kept, and no restart mends it.
  `check_data_dir` says so in one line naming the path (`campus: error:`,
  exit 2), for the person who must fix the mount.
- **The outbox file is damaged** (torn pages, a garbage header, a garbage
  write-ahead log, an empty file, a directory in its place): `set_aside`
  moves it, with its `-wal` and `-shm`, to `agent.db.corrupt-<UTC time>` for
  forensics, and the outbox starts a new file, hence a new `instance`, whose
  numbers central counts afresh. `Replacement` is what the agent reports.
- **The disk is full** (or the card answers writes with I/O errors):
  `StorageHealth` turns SQLite's error into a gateway-level status (`full`,
  `error`), logs one line when it starts and at most one every
  `LOG_EVERY_S` while it lasts, and one when writing works again.

Why the `-wal` is checked by hand: SQLite silently ignores a write-ahead log
whose header is garbage, so the outbox would reopen at the state of its last
checkpoint, and seq numbers already published would be handed out again.
A log whose header is not SQLite's (`wal_header_problem`) is damage, not an
interrupted write: with `synchronous=FULL` SQLite syncs the header before the
first frame of every generation.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from campus import contract
from campus.errors import ConfigError
from campus.i18n import LazyText, lazy_gettext

log = logging.getLogger(__name__)

KEEP_CORRUPT = 3      # sets of damaged files kept for forensics; older ones are deleted (a dying card repeats)
LOG_EVERY_S = 600.0   # while storage is failing, one reminder line this often at most
SIDE_FILES = ("-wal", "-shm", "-journal")
WAL_MAGIC = (0x377F0682, 0x377F0683)  # the last bit: the byte order of the checksums
WAL_VERSION = 3007000

# SQLite's primary result codes (the low byte of the extended code), by what they mean for the gateway.
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_FULL = {sqlite3.SQLITE_FULL}
_WRITE_FAILED = {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM,
                 sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_PROTOCOL}


def classify(exc: sqlite3.Error) -> str | None:
    """`corrupt`, `full` or `error` (a write the storage refused); None for anything else (a bug: re-raise)."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in _CORRUPT:
        return "corrupt"
    if code in _FULL:
        return "full"
    if code in _WRITE_FAILED:
        return "error"
    return None


# ---------------------------------------------------------------- the data directory


def check_data_dir(path: Path) -> bool:
    """Make sure `path` is a directory the agent can write; ConfigError naming it if not.

    Returns False when the directory is usable but the disk is full right now:
    that is not a reason to stop (space comes back), the outbox reports it.
    """
    def refuse(why: str) -> ConfigError:
        return ConfigError(f"data_dir {path}: {why}")

    if path.exists() and not path.is_dir():
        raise refuse("exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise refuse(f"cannot create it ({exc.strerror or exc})") from None
    probe = path / f".write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return False
        raise refuse(f"cannot write there ({exc.strerror or exc})") from None
    try:
        os.write(fd, b"x")
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return False
        raise refuse(f"cannot write there ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
        try:
            probe.unlink()
        except OSError:
            pass
    return True


# ---------------------------------------------------------------- damaged outbox files


def wal_header_problem(db_path: Path) -> LazyText | None:
    """Why the `-wal` next to `db_path` is not a write-ahead log SQLite would use, or None if it is fine."""
    wal = Path(f"{db_path}-wal")
    try:
        with open(wal, "rb") as f:
            header = f.read(32)
    except FileNotFoundError:
        return None
    if not header:
        return None  # an empty log holds nothing
    if len(header) < 32:
        return lazy_gettext("its write-ahead log (%(file)s) is cut short (%(bytes)s bytes)", file=wal.name,
                            bytes=len(header))
    magic, version = struct.unpack(">II", header[:8])
    if magic not in WAL_MAGIC or version != WAL_VERSION:
        return lazy_gettext("its write-ahead log (%(file)s) has no valid header", file=wal.name)
    if _wal_checksum(header[:24], big_endian=bool(magic & 1)) != struct.unpack(">II", header[24:32]):
        return lazy_gettext("its write-ahead log (%(file)s) has a damaged header", file=wal.name)
    return None


def _wal_checksum(data: bytes, *, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum (https://www.sqlite.org/fileformat2.html#walformat) over `data`."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    s0 = s1 = 0
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def precheck(db_path: Path) -> LazyText | None:
    """What is wrong with the files at `db_path` before SQLite opens them, or None."""
    if db_path.is_dir():
        return lazy_gettext("a directory is where the outbox file should be")
    if db_path.exists() or db_path.is_symlink():
        if not db_path.is_file():
            return lazy_gettext("the outbox path is not a regular file")
        if db_path.stat().st_size == 0:
            return lazy_gettext("the outbox file is empty (cut short)")
    else:
        wal = Path(f"{db_path}-wal")
        if wal.is_file() and wal.stat().st_size:
            return lazy_gettext("the outbox file is missing but its write-ahead log is not")
        return None
    return wal_header_problem(db_path)


def connect(path: Path, *, exclusive: bool = False) -> sqlite3.Connection:
    """The outbox's connection: WAL, synchronous=FULL (a power cut keeps what was committed).

    `exclusive` for a full disk at start: WAL's shared-memory index (`-shm`)
    is a file SQLite cannot create without space, and in exclusive locking mode
    it keeps that index in memory instead (no other process can read the file
    meanwhile; the agent does not need one to)."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        if exclusive:
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
    except BaseException:
        db.close()
        raise
    return db


def verify(db: sqlite3.Connection) -> LazyText | None:
    """Why an existing file is not a sound outbox, or None. Reads every page: at open only."""
    rows = db.execute("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        return damaged(str(rows[0][0])[:160])
    try:
        db.execute("SELECT 1 FROM outbox LIMIT 1").fetchall()
        next_seq = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
    except sqlite3.OperationalError as exc:
        if classify(exc) is not None:
            raise
        return lazy_gettext("the file holds no outbox (its tables are missing)")
    if next_seq is None or not isinstance(next_seq[0], int):
        return lazy_gettext("the outbox's sequence counter is missing")
    return None


@dataclass(frozen=True)
class Replacement:
    """A damaged outbox set aside and a new one started: what the agent reports in `state.outbox_replaced`."""

    at: float                      # when (the gateway's clock)
    reason: str | LazyText         # what was wrong, in words (marked for translation: `as_dict`)
    kept_as: str                   # the file name it was moved to, next to the new one
    lost: int | None               # unsent messages it held, when that can be read exactly; None: unknown
    previous_instance: int | None  # the old outbox instance, when readable
    previous_last_seq: int | None  # its last seq number, when readable: central can tell what never arrived

    def as_dict(self) -> dict[str, Any]:
        """What `state.outbox_replaced` and the `outbox_replaced` event carry: `reason` in English and marked
        (`reason_msgid`, `reason_params`: campus/contract.py `text_fields`)."""
        out = asdict(self)
        del out["reason"]
        return {"at": self.at, **contract.text_fields(self.reason, contract.REPLACED_REASON_CHARS, "reason"),
                **{k: v for k, v in out.items() if k != "at"}}

    def stored_reason(self) -> str:
        """The reason as the outbox file's `replaced` table keeps it: the marked text as JSON, so an agent
        restarted after the replacement reports it in the same words (`reason_from_column`)."""
        if isinstance(self.reason, LazyText) and self.reason.msgid:
            return json.dumps({"english": str(self.reason), **self.reason.as_dict()}, ensure_ascii=False)
        return str(self.reason)


def reason_from_column(value: str) -> str | LazyText:
    """A `replaced.reason` read back (`Replacement.stored_reason`): the marked text, or plain English (a file
    written by an agent before marking, or a reason that merely is not JSON)."""
    if value.startswith('{"english"'):
        try:
            stored = json.loads(value)
            return LazyText.from_dict(stored) if isinstance(stored, dict) and "msgid" in stored else value
        except (ValueError, TypeError, KeyError):
            return value
    return value


def damaged(error: str) -> LazyText:
    """The reason of an outbox file found damaged, with what SQLite (or the check) said, in its English."""
    return lazy_gettext("the outbox file is damaged (%(error)s)", error=error)


def set_aside(db_path: Path, reason: str | LazyText, now: float) -> Replacement:
    """Move the outbox file (and its side files) out of the way and read what can be read of it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = db_path.with_name(f"{db_path.name}.corrupt-{stamp}")
    n = 1
    while any(Path(f"{target}{s}").exists() for s in ("", *SIDE_FILES)):
        n += 1
        target = db_path.with_name(f"{db_path.name}.corrupt-{stamp}-{n}")
    for suffix in ("", *SIDE_FILES):
        src = Path(f"{db_path}{suffix}")
        if src.exists() or src.is_symlink():
            os.replace(src, f"{target}{suffix}")  # OSError here: the directory itself is unusable
    _fsync_dir(db_path.parent)
    lost, instance, last_seq = _read_what_remains(target)
    _prune_corrupt(db_path)
    return Replacement(at=now, reason=reason, kept_as=target.name, lost=lost, previous_instance=instance,
                       previous_last_seq=last_seq)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_what_remains(kept: Path) -> tuple[int | None, int | None, int | None]:
    """(unsent rows, instance, last seq) of a set-aside outbox, each None where it cannot be read.

    Opened read-only and `immutable` (the evidence is not modified, its log not
    replayed), so the row count is exact only when the file is sound and no
    log held more; else it is unknown."""
    if not kept.is_file() or kept.stat().st_size == 0:
        return None, None, None
    uri = f"{kept.resolve().as_uri()}?mode=ro&immutable=1"
    lost = instance = last_seq = None
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error:
        return None, None, None
    try:
        meta = {}
        try:
            meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('instance', 'next_seq')"))
        except sqlite3.Error:
            pass
        instance = meta.get("instance") if isinstance(meta.get("instance"), int) else None
        last_seq = meta["next_seq"] - 1 if isinstance(meta.get("next_seq"), int) else None
        wal = Path(f"{kept}-wal")
        sound = db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        if sound and not (wal.exists() and wal.stat().st_size):
            lost = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    except sqlite3.Error:
        pass
    finally:
        db.close()
    return lost, instance, last_seq


def _prune_corrupt(db_path: Path) -> None:
    """Keep the newest KEEP_CORRUPT sets of damaged files: a card that keeps failing must not fill itself."""
    prefix = f"{db_path.name}.corrupt-"
    mains = sorted((p for p in db_path.parent.glob(f"{prefix}*") if not p.name.endswith(SIDE_FILES)),
                   key=lambda p: p.stat().st_mtime_ns if p.exists() else 0)
    for old in mains[:-KEEP_CORRUPT]:
        for suffix in ("", *SIDE_FILES):
            victim = Path(f"{old}{suffix}")
            try:
                if victim.is_dir() and not victim.is_symlink():
                    shutil.rmtree(victim)
                elif victim.exists() or victim.is_symlink():
                    victim.unlink()
            except OSError as exc:
                log.warning("cannot delete the old damaged outbox %s: %s", victim, exc.strerror or exc)
        log.info("deleted the old damaged outbox %s (keeping the newest %d)", old.name, KEEP_CORRUPT)


# ---------------------------------------------------------------- disk full, write errors


class StorageHealth:
    """The gateway-level `storage` status: `ok`, `full` (no space) or `error` (writes refused).

    Logging is rate-limited on purpose: a poll every few seconds on a full
    disk must give one line, not a traceback each time."""

    def __init__(self, where: Path, clock: Callable[[], float] = time.time) -> None:
        self.where = where
        self.clock = clock
        self.status = "ok"
        self.since: float | None = None
        self.error = ""
        self.failures = 0        # writes refused since `since`
        self._logged_at = 0.0

    def failed(self, kind: str, error: object, not_stored: int) -> bool:
        """One refused write (`kind` from `classify`; `error` what SQLite or the OS said); True if the status changed."""
        status = "full" if kind == "full" else "error"
        now = self.clock()
        self.failures += 1
        changed = status != self.status
        if changed:
            self.status, self.since, self.error = status, now, str(error)[:200]
            self._logged_at = now
            log.warning("storage %s in %s (%s): readings and events are counted as dropped, not stored, until "
                        "writing works again; devices and commands carry on", status, self.where, self.error)
        elif now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.warning("storage still %s in %s since %s: %d messages not stored so far", status, self.where,
                        time.strftime("%H:%M:%S", time.localtime(self.since or now)), not_stored)
        return changed

    def succeeded(self, not_stored: int) -> bool:
        """A write went through; True if the status changed (back to `ok`)."""
        if self.status == "ok":
            return False
        log.warning("storage in %s writable again after %.0f s: %d messages were not stored (counted as dropped)",
                    self.where, self.clock() - (self.since or self.clock()), not_stored)
        self.status, self.since, self.error, self.failures = "ok", None, "", 0
        return True

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.status != "ok":
            out.update(since=self.since, error=self.error)
        return out
