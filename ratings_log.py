"""An append-only, fsync'd log of the ratings users post, replayed on start.

One line per accepted request, so a request is stored whole or not at all::

    <crc32 as 8 hex digits> {"seq": 7, "user": 3, "ratings": [[1, 4.5], [50, 3.0]], "time": 1700000000.0}

A line whose checksum does not match, or a last line without its newline (a
write torn by a crash or power cut), is reported and skipped; the torn tail is
cut off (and kept in a ``.torn`` file beside the log) so that later appends start
on a clean line.  The file is created readable by its owner only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One accepted request: a user's ratings as (movie, rating) pairs."""

    seq: int
    user: int
    ratings: tuple[tuple[int, float], ...]
    time: float


def _encode(entry: Entry) -> bytes:
    body = json.dumps({"seq": entry.seq, "user": entry.user,
                       "ratings": [list(p) for p in entry.ratings], "time": entry.time},
                      separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode(line: bytes) -> Entry | None:
    crc, _, body = line.partition(b" ")
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        data = json.loads(body)
        return Entry(int(data["seq"]), int(data["user"]),
                     tuple((int(m), float(r)) for m, r in data["ratings"]), float(data["time"]))
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Position:
    """How far the log goes: last entry, ratings so far, and a SHA-256 over every entry up to there."""

    seq: int
    ratings: int
    sha256: str


def read_entries(path: Path) -> tuple[list[Entry], int, int]:
    """Read a log: (good entries, bytes up to the end of the last whole line, lines skipped)."""
    data = Path(path).read_bytes() if Path(path).exists() else b""
    entries: list[Entry] = []
    skipped = good_end = pos = 0
    while pos < len(data):
        newline = data.find(b"\n", pos)
        if newline < 0:  # a torn last write
            skipped += 1
            break
        entry = _decode(data[pos:newline])
        if entry is None:
            log.warning("ratings log %s: damaged line at byte %d skipped", path, pos)
            skipped += 1
        else:
            entries.append(entry)
        pos = good_end = newline + 1
    return entries, good_end, skipped


class RatingsLog:
    """The durable record of posted ratings; ``append`` returns only once the entry is on disk.

    Only a running position is kept in memory, so the log can grow for as long
    as the service runs; the entries found at start are handed over once by
    :meth:`take_recovered`.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        entries, good_end, self.skipped = read_entries(self.path)
        if self.path.exists() and good_end < self.path.stat().st_size:
            self._cut_torn_tail(good_end)
        self._hash = hashlib.sha256()
        self._ratings = 0
        for entry in entries:
            self._count(entry)
        self._seq = entries[-1].seq if entries else 0
        self._recovered = entries
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fh = os.fdopen(fd, "ab", buffering=0)

    def _cut_torn_tail(self, good_end: int) -> None:
        """Keep the torn bytes aside in ``<log>.torn`` and truncate the log to its last whole line."""
        torn = self.path.with_suffix(self.path.suffix + ".torn")
        with open(self.path, "r+b") as fh:
            fh.seek(good_end)
            tail = fh.read()
            with open(torn, "ab") as out:
                out.write(tail + b"\n")
            fh.truncate(good_end)
            os.fsync(fh.fileno())
        log.warning("ratings log %s: torn last line of %d bytes cut off (kept in %s)", self.path, len(tail), torn)

    def _count(self, entry: Entry) -> None:
        self._hash.update(_encode(entry))
        self._ratings += len(entry.ratings)

    def take_recovered(self) -> list[Entry]:
        """The entries read at start, once (the log does not keep them)."""
        entries, self._recovered = self._recovered, []
        return entries

    @property
    def last_seq(self) -> int:
        return self._seq

    def position(self) -> Position:
        with self._lock:
            return Position(self._seq, self._ratings, self._hash.hexdigest())

    def position_at(self, seq: int) -> Position | None:
        """The position after entry ``seq`` (read back from the file), or None if the log has no such entry."""
        if seq == 0:
            return Position(0, 0, hashlib.sha256().hexdigest())
        h, ratings = hashlib.sha256(), 0
        for entry in read_entries(self.path)[0]:
            h.update(_encode(entry))
            ratings += len(entry.ratings)
            if entry.seq == seq:
                return Position(seq, ratings, h.hexdigest())
        return None

    def append(self, user: int, ratings: list[tuple[int, float]]) -> Entry:
        """Write one entry and fsync it; the caller may acknowledge once this returns."""
        with self._lock:
            entry = Entry(self._seq + 1, user, tuple(ratings), time.time())
            self._fh.write(_encode(entry))
            os.fsync(self._fh.fileno())
            self._seq = entry.seq
            self._count(entry)
            return entry

    def close(self) -> None:
        with self._lock:
            self._fh.close()
