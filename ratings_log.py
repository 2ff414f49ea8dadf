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


class RatingsLog:
    """The durable record of posted ratings; ``append`` returns only once the entry is on disk."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.entries: list[Entry] = []
        self.skipped = 0
        self._recover()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fh = os.fdopen(fd, "ab", buffering=0)

    def _recover(self) -> None:
        """Read every good entry; cut a torn tail off and keep it aside."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good_end = 0
        pos = 0
        while pos < len(data):
            newline = data.find(b"\n", pos)
            if newline < 0:  # torn last write
                torn = self.path.with_suffix(self.path.suffix + ".torn")
                with open(torn, "ab") as fh:
                    fh.write(data[pos:] + b"\n")
                log.warning("ratings log %s: torn last line of %d bytes cut off (kept in %s)",
                            self.path, len(data) - pos, torn)
                self.skipped += 1
                break
            entry = _decode(data[pos:newline])
            if entry is None:
                log.warning("ratings log %s: damaged line at byte %d skipped", self.path, pos)
                self.skipped += 1
            else:
                self.entries.append(entry)
            pos = good_end = newline + 1
        if good_end < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(good_end)
                os.fsync(fh.fileno())

    @property
    def last_seq(self) -> int:
        return self.entries[-1].seq if self.entries else 0

    def append(self, user: int, ratings: list[tuple[int, float]]) -> Entry:
        """Write one entry and fsync it; the caller may acknowledge once this returns."""
        with self._lock:
            entry = Entry(self.last_seq + 1, user, tuple(ratings), time.time())
            self._fh.write(_encode(entry))
            os.fsync(self._fh.fileno())
            self.entries.append(entry)
            return entry

    def digest(self, upto_seq: int) -> str:
        """SHA-256 over the entries up to ``upto_seq``: tells whether a saved model saw this log."""
        h = hashlib.sha256()
        for entry in self.entries:
            if entry.seq > upto_seq:
                break
            h.update(_encode(entry))
        return h.hexdigest()

    def close(self) -> None:
        with self._lock:
            self._fh.close()
