"""Posted ratings in SQLite: one transaction per request, and a commit is the acknowledgement.

The database (``ratings.db`` in the model folder) runs in WAL mode with
``synchronous=FULL``, so a commit returns only once its WAL frames are fsync'd;
a crash or power cut keeps every committed request whole and nothing of an
uncommitted one (WAL frames carry checksums: a torn tail is ignored on open).

Schema::

    ratings(seq, user, movie, rating, time)   -- one row per rating; seq numbers the request
    meta(key, value)                           -- store_id, trained_seq, migrated_log

``trained_seq`` is the last request the saved model was trained on.  Rows that
a later rating of the same user and movie replaced are deleted by
:meth:`RatingsStore.compact` once a model trained past them is saved.

``RatingsStore`` is the whole interface the engine uses; a server-grade
database (several servers sharing one store) would implement the same methods.
A ``ratings.log`` from earlier versions (CRC-checked JSON lines) is imported
once on open and renamed ``ratings.log.migrated``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from model import fsync_dir

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    seq INTEGER NOT NULL, user INTEGER NOT NULL, movie INTEGER NOT NULL, rating REAL NOT NULL,
    time REAL NOT NULL, PRIMARY KEY (seq, movie)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ratings_by_user ON ratings (user, movie, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# The newest rating of each (user, movie) with seq <= ?: what users have posted, as of a request.
LATEST = """
SELECT user, movie, rating, seq FROM ratings AS r WHERE seq <= :upto AND NOT EXISTS (
    SELECT 1 FROM ratings AS n WHERE n.user = r.user AND n.movie = r.movie AND n.seq > r.seq AND n.seq <= :upto)
"""


class StoreError(RuntimeError):
    """The store could not take a request (disk full, I/O error); nothing of it was stored."""


@dataclass(frozen=True)
class Entry:
    """One acknowledged request: a user's ratings as (movie, rating) pairs."""

    seq: int
    user: int
    ratings: tuple[tuple[int, float], ...]
    time: float


class RatingsStore:
    """The durable record of posted ratings; :meth:`append` returns only once the request is committed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        if created:  # readable by its owner only: it holds what users rated
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.Lock()  # one writer at a time
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._db = self._connect()
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._db:
            self._db.executescript(SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (uuid.uuid4().hex,))
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('trained_seq', '0')")
        fsync_dir(self.path.parent)  # the database and its WAL file now exist for good
        self.store_id = self._meta("store_id")
        self._seq = self._db.execute("SELECT coalesce(max(seq), 0) FROM ratings").fetchone()[0]
        self._migrate(self.path.parent / "ratings.log")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (WAL readers never wait for the writer)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
            db.execute("PRAGMA query_only=1")
            with self._readers_lock:
                self._readers.append(db)
        return db

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # --- writes ---------------------------------------------------------------------------

    def append(self, user: int, ratings: list[tuple[int, float]]) -> Entry:
        """Store one request in one transaction; the caller may acknowledge once this returns.

        Raises StoreError, with nothing stored, when the commit fails.
        """
        with self._lock:
            entry = Entry(self._seq + 1, user, tuple(ratings), time.time())
            try:
                with self._db:  # BEGIN ... COMMIT, or ROLLBACK on any error
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany("INSERT INTO ratings VALUES (?, ?, ?, ?, ?)",
                                         [(entry.seq, user, m, r, entry.time) for m, r in ratings])
            except sqlite3.Error as exc:
                raise StoreError(f"could not store the ratings: {exc}") from exc
            self._seq = entry.seq
            return entry

    def mark_trained(self, seq: int) -> None:
        """Record that the saved model was trained on every request up to ``seq``."""
        with self._lock, self._db:
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'trained_seq'", (str(seq),))

    def compact(self, upto: int) -> int:
        """Delete ratings that a later rating of the same user and movie, up to request ``upto``, replaced.

        Returns the number of rows deleted; :meth:`latest` as of ``upto`` or later does not change.
        """
        with self._lock:
            with self._db:
                deleted = self._db.execute(
                    "DELETE FROM ratings AS r WHERE seq <= :upto AND EXISTS (SELECT 1 FROM ratings AS n "
                    "WHERE n.user = r.user AND n.movie = r.movie AND n.seq > r.seq AND n.seq <= :upto)",
                    {"upto": upto}).rowcount
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if deleted:
            log.info("ratings store: %d replaced rating(s) compacted", deleted)
        return deleted

    # --- reads ----------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The last acknowledged request."""
        return self._seq

    @property
    def trained_seq(self) -> int:
        return int(self._meta("trained_seq") or 0)

    def user_ratings(self, user: int) -> list[tuple[int, float]]:
        """The user's posted ratings, newest per movie, by movie id."""
        return self._reader().execute(
            "SELECT movie, rating FROM ratings AS r WHERE user = ? AND seq = "
            "(SELECT max(seq) FROM ratings AS n WHERE n.user = r.user AND n.movie = r.movie) ORDER BY movie",
            (user,)).fetchall()

    def latest(self, upto: int) -> Iterator[tuple[int, list[tuple[int, float]], int]]:
        """Every posting user's newest ratings as of request ``upto``: (user, [(movie, rating)], last seq)."""
        rows = self._reader().execute(LATEST + " ORDER BY user, movie", {"upto": upto})
        user, pairs, last = None, [], 0
        for u, movie, rating, seq in rows:
            if u != user:
                if user is not None:
                    yield user, pairs, last
                user, pairs, last = u, [], 0
            pairs.append((movie, rating))
            last = max(last, seq)
        if user is not None:
            yield user, pairs, last

    def users_after(self, seq: int) -> list[int]:
        """Users who posted after request ``seq``."""
        return [u for (u,) in self._reader().execute("SELECT DISTINCT user FROM ratings WHERE seq > ?", (seq,))]

    def ratings_after(self, seq: int) -> int:
        """How many ratings were posted after request ``seq``."""
        return self._reader().execute("SELECT count(*) FROM ratings WHERE seq > ?", (seq,)).fetchone()[0]

    def entries(self) -> list[Entry]:
        """Every stored request, in order (for tools and tests)."""
        out: dict[int, Entry] = {}
        for seq, user, movie, rating, t in self._reader().execute(
                "SELECT seq, user, movie, rating, time FROM ratings ORDER BY seq"):
            e = out.get(seq)
            out[seq] = Entry(seq, user, (e.ratings if e else ()) + ((movie, rating),), t)
        return list(out.values())

    def close(self) -> None:
        with self._readers_lock:
            for db in self._readers:
                db.close()
            self._readers.clear()
        with self._lock:
            self._db.close()

    # --- migration ------------------------------------------------------------------------

    def _migrate(self, old: Path) -> None:
        """Import a ``ratings.log`` from earlier versions once, keeping its sequence numbers."""
        if not old.exists():
            return
        if self._meta("migrated_log") is None:
            entries, skipped = read_old_log(old)
            with self._lock, self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR IGNORE INTO ratings VALUES (?, ?, ?, ?, ?)",
                                     [(e.seq, e.user, m, r, e.time) for e in entries for m, r in e.ratings])
                self._db.execute("INSERT INTO meta VALUES ('migrated_log', ?)",
                                 (json.dumps({"entries": len(entries), "skipped_lines": skipped}),))
            self._seq = self._db.execute("SELECT coalesce(max(seq), 0) FROM ratings").fetchone()[0]
            log.info("ratings store: imported %d request(s) from %s (%d damaged line(s) skipped)",
                     len(entries), old, skipped)
        os.replace(old, old.with_name(old.name + ".migrated"))
        fsync_dir(old.parent)


def read_old_log(path: Path) -> tuple[list[Entry], int]:
    """The good entries of an old ``ratings.log`` (``<crc32> <json>`` lines) and how many lines were skipped."""
    entries, skipped = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        crc, _, body = line.partition(b" ")
        try:
            if int(crc, 16) != zlib.crc32(body):
                raise ValueError("checksum")
            data = json.loads(body)
            entries.append(Entry(int(data["seq"]), int(data["user"]),
                                 tuple((int(m), float(r)) for m, r in data["ratings"]), float(data["time"])))
        except (ValueError, KeyError, TypeError):
            skipped += 1
    return entries, skipped
