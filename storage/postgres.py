"""The ratings store in PostgreSQL (``--store postgresql://...``): one store for API processes on many hosts.

The same tables as SQLite's (see :mod:`storage.store` for the promises), plus
the published model versions (:mod:`storage.shipping`), so that API processes
on other hosts load models without a shared disk.  Connections come from a
psycopg pool.  Writers order themselves on the ``last_seq`` row: ``UPDATE``
locks it until COMMIT, so request numbers grow in commit order across hosts,
and a POST is acknowledged only after its COMMIT returned (``synchronous_commit``
as the server has it: on, by default, which waits for the WAL flush).

When the server goes away, the request that finds out fails with StoreError (a
503 for a POST, nothing stored: the transaction never committed; a GET answers
from memory), and so does every request after it, at once, without waiting for
a connection, until a probe connects again (every PROBE seconds).  The probe
then replaces the pool's dead idle connections, and requests go through again:
no restart, and no request waits on a server that is down.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from storage.store import Store, StoreError, TrainerClaim

log = logging.getLogger(__name__)
# The pool logs each failed reconnection attempt; during an outage that is a line per request.  The store
# says once that it is down (serving/recommender.py), and every refused write is a 503 and a metric.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    seq BIGINT NOT NULL, "user" BIGINT NOT NULL, movie BIGINT NOT NULL, rating DOUBLE PRECISION NOT NULL,
    time DOUBLE PRECISION NOT NULL, PRIMARY KEY (seq, movie));
CREATE INDEX IF NOT EXISTS ratings_by_user ON ratings ("user", movie, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS user_tokens (
    "user" BIGINT PRIMARY KEY, hash BYTEA NOT NULL UNIQUE, issued DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS model_versions (
    number INTEGER PRIMARY KEY, meta TEXT NOT NULL, created DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS model_files (
    number INTEGER NOT NULL REFERENCES model_versions ON DELETE CASCADE, name TEXT NOT NULL, part INTEGER NOT NULL,
    data BYTEA NOT NULL, PRIMARY KEY (number, name, part));
"""
SCHEMA_LOCK = 4_242_001  # an advisory lock: processes starting at once create the tables one at a time
TRAINER_LOCK = 4_242_002  # an advisory lock: one trainer per store, whatever its host
CONNECT_TIMEOUT = 5  # seconds to open a connection (a server that does not answer)
WAIT_TIMEOUT = 3.0  # seconds a request waits for a pooled connection
PROBE = 0.25  # seconds between connection attempts while the server is down
ERRORS = (psycopg.Error, PoolTimeout)


class _Cursor:
    """psycopg's connection behind the shared SQL's ``?`` placeholders."""

    def __init__(self, conn: psycopg.Connection):
        self._conn = conn

    def execute(self, sql: str, params: tuple | list = ()):
        return self._conn.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: list):
        cur = self._conn.cursor()
        cur.executemany(sql.replace("?", "%s"), rows)
        return cur


def _reason(exc: Exception) -> str:
    """psycopg's message on one line: its first line says what failed (the next ones give hints)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return re.sub(r"\s+", " ", lines[0]).removeprefix("connection failed: ") if lines else type(exc).__name__


def redact(url: str) -> str:
    """The URL without its password, for logs and the status page."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}"))


class PostgresStore(Store):
    """The store on a PostgreSQL server; see the module's docstring."""

    kind = "postgresql"
    lock_row = " FOR UPDATE"

    def __init__(self, url: str, max_connections: int = 8):
        self.url = url
        self.where = redact(url)
        try:  # a bad URL, a wrong password or no server: one clear line, before anything starts
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT).close()
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the PostgreSQL store {self.where}: {_reason(exc)}") from None
        self._pool = ConnectionPool(url, min_size=1, max_size=max_connections, open=True, timeout=WAIT_TIMEOUT,
                                    kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
                                    reconnect_timeout=0, name="ratings-store")
        self._state = threading.Lock()
        self._down, self._closed = threading.Event(), threading.Event()
        self._why = ""
        with self.writing() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            for statement in SCHEMA.strip().split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT INTO meta VALUES ('store_id', ?) ON CONFLICT (key) DO NOTHING", (uuid.uuid4().hex,))
            db.execute("INSERT INTO meta VALUES ('last_seq', '0') ON CONFLICT (key) DO NOTHING")
        self.store_id = self.get_meta("store_id")

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        if self._down.is_set():  # known down: answer at once rather than wait for the pool
            raise StoreError(f"the PostgreSQL store {self.where} is not answering: {self._why}")
        try:
            with self._pool.connection() as conn:
                yield conn
        except StoreError:
            raise
        except ERRORS as exc:
            if isinstance(exc, (psycopg.OperationalError, PoolTimeout)):
                self._went_down(_reason(exc))
            raise StoreError(f"the PostgreSQL store {self.where} failed: {_reason(exc)}") from exc

    def _went_down(self, why: str) -> None:
        """A connection failed: refuse requests at once until a probe connects again, then replace the
        pool's idle connections (after a server restart every one of them is dead) and take requests."""
        with self._state:
            self._why = why
            if self._down.is_set():
                return
            self._down.set()
        log.warning("the PostgreSQL store %s is not answering (%s): probing every %g s", self.where, why, PROBE)

        def probe() -> None:
            while not self._closed.wait(PROBE):
                try:
                    psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT).close()
                    self._pool.check()
                except (psycopg.Error, PoolTimeout) as exc:
                    self._why = _reason(exc)
                    continue
                self._down.clear()
                log.warning("the PostgreSQL store %s answers again", self.where)
                return

        threading.Thread(target=probe, name="store-probe", daemon=True).start()

    @contextmanager
    def writing(self) -> Iterator[_Cursor]:
        """A transaction on a pooled connection: COMMIT when the block ends, ROLLBACK on any error.  A
        connection that broke is thrown away by the pool, and the next request gets a fresh one."""
        with self._connection() as conn, conn.transaction():
            yield _Cursor(conn)

    @contextmanager
    def reading(self) -> Iterator[_Cursor]:
        """A pooled connection in autocommit: each statement reads one snapshot."""
        with self._connection() as conn:
            yield _Cursor(conn)

    def trainer_lock(self) -> AdvisoryClaim | None:
        """The store's trainer lock (a session advisory lock on a connection of its own), or None when
        another trainer holds it."""
        claim = AdvisoryClaim(self.url)
        try:
            return claim if claim.take() else None
        except psycopg.Error as exc:
            raise StoreError(f"the PostgreSQL store {self.where} failed: {_reason(exc)}") from exc

    def describe(self) -> dict:
        with self.reading() as db:
            size = db.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        return {"kind": self.kind, "where": self.where, "bytes": int(size)}

    def close(self) -> None:
        self._closed.set()
        self._pool.close()


class AdvisoryClaim(TrainerClaim):
    """One trainer per database: a session advisory lock, which the server drops when its connection ends
    (however the trainer ends, and also when the server restarts).  ``held()`` checks the connection and,
    when it was lost, takes the lock again, unless another trainer took it meanwhile."""

    def __init__(self, url: str):
        self.url = url
        self._conn: psycopg.Connection | None = None

    def take(self) -> bool:
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        if conn.execute("SELECT pg_try_advisory_lock(%s)", (TRAINER_LOCK,)).fetchone()[0]:
            self._conn = conn
            return True
        conn.close()
        return False

    def held(self) -> bool:
        try:
            self._conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            pass
        try:  # the connection, and with it the lock, is gone: take it again
            return self.take()
        except psycopg.Error:
            return True  # the server is still away, and nobody can take the lock there meanwhile

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
