"""Posted ratings in SQLite, shared by every process on one model folder: a commit is the acknowledgement.

The database (``ratings.db`` in the model folder) runs in WAL mode with
``synchronous=FULL``, so a commit returns only once its WAL frames are fsync'd;
a crash or power cut keeps every committed request whole and nothing of an
uncommitted one (WAL frames carry checksums: a torn tail is ignored on open).

Schema::

    ratings(seq, user, movie, rating, time)   -- one row per rating; seq numbers the request
    meta(key, value)                           -- store_id, last_seq, trainer status, retrain requests

Request numbers come from ``meta.last_seq``, incremented inside the writing
transaction (``BEGIN IMMEDIATE`` holds the database's one write lock), so any
number of processes can append at once: numbers never collide, and they grow in
commit order, so a reader that has seen request N has seen every request before
it.  That is what lets API processes fold in each other's writes: each one asks
for the rows after the last request it has seen.

Rows that a later rating of the same user and movie replaced are deleted by
:meth:`RatingsStore.compact` once a published model covers the later one.  A
``ratings.log`` from earlier versions (CRC-checked JSON lines) is imported once
on open and renamed ``ratings.log.migrated``.
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

from storage.files import fsync_dir

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
TRAINER_STATUS, RETRAIN_REQUESTED = "trainer", "retrain_requested"  # meta keys
COMPACT_BATCH = 500  # replaced rows one compaction transaction deletes (by key: a few ms of the writer lock)
# A pause after each: a POST in another process that found the lock taken sleeps in SQLite's busy handler
# (1, 2, 5, 10, 15, 20, 25 ms ...) and must find it free when it wakes, or it sleeps longer.
COMPACT_PAUSE = 0.03
REPLACED = """
SELECT seq, movie FROM ratings AS r WHERE seq <= :upto AND EXISTS (
    SELECT 1 FROM ratings AS n WHERE n.user = r.user AND n.movie = r.movie AND n.seq > r.seq AND n.seq <= :upto)
"""


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the store's database as every writer needs it: autocommit (transactions are
    explicit), durable commits, and a wait for the writer lock instead of an error."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=30000")
    return db


class StoreError(RuntimeError):
    """The store could not take a request (disk full, I/O error); nothing of it was stored."""


@dataclass(frozen=True)
class Entry:
    """One acknowledged request: a user's ratings as (movie, rating) pairs."""

    seq: int
    user: int
    ratings: tuple[tuple[int, float], ...]
    time: float


Changes = dict[int, dict[int, float]]  # user -> movie -> newest rating


class RatingsStore:
    """The durable record of posted ratings; :meth:`append` returns only once the request is committed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():  # readable by its owner only: it holds what users rated
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.Lock()  # this process's writers take turns on the one write connection
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._db = connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA.strip().split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (uuid.uuid4().hex,))
            # Stores written before request numbers lived in meta start from their largest request.
            self._db.execute("INSERT OR IGNORE INTO meta SELECT 'last_seq', coalesce(max(seq), 0) FROM ratings")
        fsync_dir(self.path.parent)  # the database and its WAL file now exist for good
        self.store_id = self.get_meta("store_id")
        self._migrate(self.path.parent / "ratings.log")

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (WAL readers never wait for the writer)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.path)
            db.execute("PRAGMA query_only=1")
            with self._readers_lock:
                self._readers.append(db)
        return db

    # --- writes ---------------------------------------------------------------------------

    def append(self, user: int, ratings: list[tuple[int, float]]) -> Entry:
        """Store one request in one transaction; the caller may acknowledge once this returns.

        Raises StoreError, with nothing stored, when the commit fails.
        """
        now = time.time()
        with self._lock:
            try:
                with self._db:  # BEGIN ... COMMIT, or ROLLBACK on any error
                    self._db.execute("BEGIN IMMEDIATE")
                    seq = int(self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'last_seq' "
                                               "RETURNING value").fetchone()[0])
                    self._db.executemany("INSERT INTO ratings VALUES (?, ?, ?, ?, ?)",
                                         [(seq, user, m, r, now) for m, r in ratings])
            except sqlite3.Error as exc:
                raise StoreError(f"could not store the ratings: {exc}") from exc
        return Entry(seq, user, tuple(ratings), now)

    def put_meta(self, key: str, value: str) -> None:
        """Set one shared setting (the trainer's status, a retrain request)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def new_user(self, floor: int, taken) -> int:
        """A user id no one has: at least ``floor``, above every id handed out before by any process, with
        no stored rating, and not ``taken(id)`` (ratings the caller knows of)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'next_user'").fetchone()
            user = max(floor, int(row[0]) if row else 0)
            while taken(user) or self._db.execute("SELECT 1 FROM ratings WHERE user = ? LIMIT 1", (user,)).fetchone():
                user += 1
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('next_user', ?)", (str(user + 1),))
        return user

    def request_retrain(self) -> float:
        """Ask the trainer for a fit now (an operator's or a test's request); returns the request's time."""
        now = time.time()
        self.put_meta(RETRAIN_REQUESTED, repr(now))
        return now

    def set_trainer_status(self, status: dict) -> None:
        """The trainer's state, policy and last fit, for every API process's /health."""
        self.put_meta(TRAINER_STATUS, json.dumps(status, sort_keys=True))

    def compact(self, upto: int) -> int:
        """Delete ratings that a later rating of the same user and movie, up to request ``upto``, replaced.

        The replaced rows are found in a read snapshot, which holds no lock (a row
        replaced as of ``upto`` stays replaced: the newest one never goes), then
        deleted by key in transactions of COMPACT_BATCH rows, so a POST waits a few
        milliseconds at most.  Returns the number of rows deleted; :meth:`latest`
        as of ``upto`` or later does not change.
        """
        keys = self._reader().execute(REPLACED, {"upto": upto}).fetchall()
        deleted = 0
        for start in range(0, len(keys), COMPACT_BATCH):
            with self._lock, self._db:
                self._db.execute("BEGIN IMMEDIATE")
                deleted += self._db.executemany("DELETE FROM ratings WHERE seq = ? AND movie = ?",
                                                keys[start:start + COMPACT_BATCH]).rowcount
            time.sleep(COMPACT_PAUSE)
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        if deleted:
            log.info("ratings store: %d replaced rating(s) compacted", deleted)
        return deleted

    # --- reads ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def retrain_requested(self) -> float | None:
        """When a fit was last asked for (Unix time), or None."""
        value = self.get_meta(RETRAIN_REQUESTED)
        return float(value) if value else None

    def trainer_status(self) -> dict | None:
        value = self.get_meta(TRAINER_STATUS)
        return json.loads(value) if value else None

    @property
    def last_seq(self) -> int:
        """The last acknowledged request, by any process."""
        return int(self.get_meta("last_seq") or 0)

    def changes(self, after: int) -> tuple[int, Changes]:
        """Every rating posted after request ``after``, newest per user and movie, and the last request
        they include (read in one snapshot, so nothing committed in between is half-seen)."""
        db = self._reader()
        db.execute("BEGIN")
        try:
            upto = int(db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0])
            rows = db.execute("SELECT user, movie, rating FROM ratings WHERE seq > ? AND seq <= ? ORDER BY seq",
                              (after, upto)).fetchall()
        finally:
            db.execute("COMMIT")
        changes: Changes = {}
        for user, movie, rating in rows:
            changes.setdefault(user, {})[movie] = rating
        return upto, changes

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

    def ratings_after(self, seq: int) -> int:
        """How many ratings were posted after request ``seq``."""
        return self._reader().execute("SELECT count(*) FROM ratings WHERE seq > ?", (seq,)).fetchone()[0]

    def first_time_after(self, seq: int) -> float | None:
        """When the first rating after request ``seq`` was posted (Unix time), or None."""
        return self._reader().execute("SELECT min(time) FROM ratings WHERE seq > ?", (seq,)).fetchone()[0]

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
        if self.get_meta("migrated_log") is None:
            entries, skipped = read_old_log(old)
            with self._lock, self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR IGNORE INTO ratings VALUES (?, ?, ?, ?, ?)",
                                     [(e.seq, e.user, m, r, e.time) for e in entries for m, r in e.ratings])
                self._db.execute("UPDATE meta SET value = (SELECT max(CAST(meta.value AS INTEGER), "
                                 "coalesce(max(seq), 0)) FROM ratings) WHERE key = 'last_seq'")
                self._db.execute("INSERT INTO meta VALUES ('migrated_log', ?)",
                                 (json.dumps({"entries": len(entries), "skipped_lines": skipped}),))
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
