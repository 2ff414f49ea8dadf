"""The ratings store in SQLite (the default), shared by every process on one model folder.

The database (``ratings.db`` in the model folder) runs in WAL mode with
``synchronous=FULL``, so a commit returns only once its WAL frames are fsync'd;
a crash or power cut keeps every committed request whole and nothing of an
uncommitted one (WAL frames carry checksums: a torn tail is ignored on open).

Schema::

    ratings(seq, user, movie, rating, time)   -- one row per rating; seq numbers the request
    meta(key, value)                           -- store_id, last_seq, trainer status, retrain requests
    user_tokens(user, hash, issued)            -- storage/tokens.py
    idempotency(scope, key, fingerprint, answer, time)  -- Idempotency-Key answers, kept 24 hours
    experiments, experiment_ratings, experiment_lists  -- storage/steering.py
    forgotten, unrated, hidden, movie_rules            -- storage/people.py

``BEGIN IMMEDIATE`` holds the database's one write lock for each write
transaction, so the promises of :mod:`storage.store` hold across the processes
of one host.  A ``ratings.log`` from earlier versions (CRC-checked JSON lines)
is imported once on open and renamed ``ratings.log.migrated``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.files import fsync_dir
from storage.store import Entry, Store, StoreError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    seq INTEGER NOT NULL, user INTEGER NOT NULL, movie INTEGER NOT NULL, rating REAL NOT NULL,
    time REAL NOT NULL, PRIMARY KEY (seq, movie)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ratings_by_user ON ratings (user, movie, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS user_tokens (user INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE, issued REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, answer TEXT NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (scope, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_time ON idempotency (time);
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, started REAL NOT NULL, stopped REAL, outcome TEXT);
CREATE TABLE IF NOT EXISTS experiment_ratings (
    experiment TEXT NOT NULL, seq INTEGER NOT NULL, user INTEGER NOT NULL, movie INTEGER NOT NULL, arm TEXT NOT NULL,
    version INTEGER NOT NULL, rating REAL NOT NULL, predicted REAL NOT NULL, shown INTEGER,
    PRIMARY KEY (experiment, user, movie)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS experiment_lists (
    experiment TEXT NOT NULL, user INTEGER NOT NULL, arm TEXT NOT NULL, lists INTEGER NOT NULL, movies TEXT NOT NULL,
    shown_at REAL NOT NULL, PRIMARY KEY (experiment, user)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forgotten (user INTEGER PRIMARY KEY, seq INTEGER NOT NULL, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS forgotten_by_seq ON forgotten (seq);
CREATE TABLE IF NOT EXISTS unrated (
    user INTEGER NOT NULL, movie INTEGER NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (user, movie)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS unrated_by_seq ON unrated (seq);
CREATE TABLE IF NOT EXISTS hidden (
    user INTEGER NOT NULL, movie INTEGER NOT NULL, seq INTEGER NOT NULL, hidden INTEGER NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (user, movie)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS hidden_by_seq ON hidden (seq);
CREATE TABLE IF NOT EXISTS movie_rules (movie INTEGER PRIMARY KEY, seq INTEGER NOT NULL, rule TEXT, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS movie_rules_by_seq ON movie_rules (seq);
"""
# A pause after each compaction transaction: a POST in another process that found the lock taken sleeps in
# SQLite's busy handler (1, 2, 5, 10, 15, 20, 25 ms ...) and must find it free when it wakes, or it sleeps longer.
COMPACT_PAUSE = 0.03


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the store's database as every writer needs it: autocommit (transactions are
    explicit), durable commits, and a wait for the writer lock instead of an error."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=30000")
    return db


class SQLiteStore(Store):
    """The store in one SQLite file (``ratings.db`` in the model folder), shared by the processes of one host."""

    kind = "sqlite"
    driver_errors = (sqlite3.Error,)
    compact_pause = COMPACT_PAUSE

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self.where = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():  # readable by its owner only: it holds what users rated
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.Lock()  # this process's writers take turns on the one write connection
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._db = connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        with self.writing() as db:
            for statement in SCHEMA.strip().split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (uuid.uuid4().hex,))
            # Stores written before request numbers lived in meta start from their largest request.
            db.execute("INSERT OR IGNORE INTO meta SELECT 'last_seq', coalesce(max(seq), 0) FROM ratings")
        fsync_dir(self.path.parent)  # the database and its WAL file now exist for good
        self.store_id = self.get_meta("store_id")
        self._migrate(self.path.parent / "ratings.log")

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` takes the database's one write lock (other processes wait for it, up to
        30 s); the commit is durable when it returns (``synchronous=FULL``)."""
        with self._lock:
            try:
                with self._db:  # BEGIN ... COMMIT, or ROLLBACK on any error
                    self._db.execute("BEGIN IMMEDIATE")
                    yield self._db
            except sqlite3.Error as exc:
                raise self.refusal(exc) from exc

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """This thread's read connection (WAL readers never wait for the writer)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.path)
            db.execute("PRAGMA query_only=1")
            with self._readers_lock:
                self._readers.append(db)
        try:
            yield db
        except sqlite3.Error as exc:
            raise StoreError(f"could not read the ratings store: {exc}") from exc

    def compact(self, upto: int) -> int:
        """As every store compacts, then hands the freed WAL back to the database file."""
        deleted = super().compact(upto)
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return deleted

    def describe(self) -> dict:
        size = sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal"))
                   if p.exists())
        return {"kind": self.kind, "where": str(self.path), "bytes": size}

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
            with self.writing() as db:
                db.executemany("INSERT OR IGNORE INTO ratings VALUES (?, ?, ?, ?, ?)",
                               [(e.seq, e.user, m, r, e.time) for e in entries for m, r in e.ratings])
                db.execute("UPDATE meta SET value = (SELECT max(CAST(meta.value AS INTEGER), "
                           "coalesce(max(seq), 0)) FROM ratings) WHERE key = 'last_seq'")
                db.execute("INSERT INTO meta VALUES ('migrated_log', ?)",
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
