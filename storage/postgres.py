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
no restart, and no request waits on a server that is down.  Only a lost
connection is an outage: a pool with no free connection within WAIT_TIMEOUT, a
statement timeout or a deadlock fail that request alone (StoreBusy), and the
next request tries again.

The URL's password (``user:password@``, a ``password=`` parameter) and
``PGPASSWORD`` never appear in a message: :func:`redact` and :func:`scrub`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from storage.store import Store, StoreBusy, StoreError, TrainerClaim

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
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, answer TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL, PRIMARY KEY (scope, key));
CREATE INDEX IF NOT EXISTS idempotency_by_time ON idempotency (time);
CREATE TABLE IF NOT EXISTS model_versions (
    number INTEGER PRIMARY KEY, meta TEXT NOT NULL, created DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS model_files (
    number INTEGER NOT NULL REFERENCES model_versions ON DELETE CASCADE, name TEXT NOT NULL, part INTEGER NOT NULL,
    data BYTEA NOT NULL, PRIMARY KEY (number, name, part));
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, started DOUBLE PRECISION NOT NULL, stopped DOUBLE PRECISION,
    outcome TEXT);
CREATE TABLE IF NOT EXISTS experiment_ratings (
    experiment TEXT NOT NULL, seq BIGINT NOT NULL, "user" BIGINT NOT NULL, movie BIGINT NOT NULL, arm TEXT NOT NULL,
    version INTEGER NOT NULL, rating DOUBLE PRECISION NOT NULL, predicted DOUBLE PRECISION NOT NULL, shown INTEGER,
    PRIMARY KEY (experiment, "user", movie));
CREATE TABLE IF NOT EXISTS experiment_lists (
    experiment TEXT NOT NULL, "user" BIGINT NOT NULL, arm TEXT NOT NULL, lists BIGINT NOT NULL, movies TEXT NOT NULL,
    shown_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (experiment, "user"));
CREATE TABLE IF NOT EXISTS forgotten ("user" BIGINT PRIMARY KEY, seq BIGINT NOT NULL, time DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS forgotten_by_seq ON forgotten (seq);
CREATE TABLE IF NOT EXISTS unrated (
    "user" BIGINT NOT NULL, movie BIGINT NOT NULL, seq BIGINT NOT NULL, time DOUBLE PRECISION NOT NULL,
    PRIMARY KEY ("user", movie));
CREATE INDEX IF NOT EXISTS unrated_by_seq ON unrated (seq);
CREATE TABLE IF NOT EXISTS hidden (
    "user" BIGINT NOT NULL, movie BIGINT NOT NULL, seq BIGINT NOT NULL, hidden INTEGER NOT NULL,
    time DOUBLE PRECISION NOT NULL, PRIMARY KEY ("user", movie));
CREATE INDEX IF NOT EXISTS hidden_by_seq ON hidden (seq);
CREATE TABLE IF NOT EXISTS movie_rules (
    movie BIGINT PRIMARY KEY, seq BIGINT NOT NULL, rule TEXT, time DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS movie_rules_by_seq ON movie_rules (seq);
"""
SCHEMA_LOCK = 4_242_001  # an advisory lock: processes starting at once create the tables one at a time
TRAINER_LOCK = 4_242_002  # an advisory lock: one trainer per store, whatever its host
CONNECT_TIMEOUT = 5  # seconds to open a connection (a server that does not answer)
WAIT_TIMEOUT = 3.0  # seconds a request waits for a pooled connection (then a 503 for that request alone)
POOL_SIZE = 16  # connections: one for each of the API's default 16 threads, so a burst waits for none
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


def _reason(exc: Exception, url: str = "") -> str:
    """psycopg's message on one line (its first line says what failed; the next ones give hints), with
    any password of ``url`` scrubbed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = re.sub(r"\s+", " ", lines[0]).removeprefix("connection failed: ") if lines else type(exc).__name__
    return scrub(text, url)


def _too_many_clients(exc: psycopg.Error) -> bool:
    """The server refused a connection because it has max_connections already (SQLSTATE 53300)."""
    return getattr(exc, "sqlstate", None) == "53300" or "too many clients" in str(exc)


def _passwords(url: str) -> list[str]:
    """Every password a connection to ``url`` may use: its userinfo's, its ``password=`` parameters' and
    ``PGPASSWORD``."""
    found = [os.environ.get("PGPASSWORD", "")]
    try:
        parts = urlsplit(url)
        found += [parts.password or ""]
        found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "password"]
    except ValueError:  # not a URL at all: nothing in it to find
        pass
    return [p for p in found if p]


def scrub(text: str, url: str) -> str:
    """``text`` with every password of ``url`` (see :func:`_passwords`) replaced by ``***``."""
    for password in sorted(_passwords(url), key=len, reverse=True):
        text = text.replace(password, "***")
    return text


def redact(url: str) -> str:
    """The URL without its password (userinfo or ``password=`` parameter), for logs and the status page."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            user, host = parts.netloc.rsplit("@", 1)
            parts = parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(k == "password" for k, _ in query):
            parts = parts._replace(query=urlencode([(k, "***" if k == "password" else v) for k, v in query],
                                                   safe="*"))
        return scrub(urlunsplit(parts), url)
    except ValueError:
        return "postgresql://(an unreadable URL)"


class PostgresStore(Store):
    """The store on a PostgreSQL server; see the module's docstring."""

    kind = "postgresql"
    driver_errors = ERRORS
    lock_row = " FOR UPDATE"

    def __init__(self, url: str, max_connections: int = POOL_SIZE):
        super().__init__()
        self.url = url
        self.where = redact(url)
        try:  # a bad URL, a wrong password or no server: one clear line, before anything starts
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT).close()
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the PostgreSQL store {self.where}: {_reason(exc, url)}") from None
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
                try:
                    yield conn
                except psycopg.OperationalError as exc:
                    if conn.broken:  # the connection itself is gone: the server went away
                        self._went_down(_reason(exc, self.url))
                    raise
        except StoreError:
            raise
        except PoolTimeout:  # every connection busy, or none could be made: only a new one tells which
            try:
                psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT).close()
            except psycopg.Error as exc:
                if _too_many_clients(exc):  # the server answers, it is only full: busy too
                    raise StoreBusy(f"the PostgreSQL store {self.where} is busy: {_reason(exc, self.url)}") from None
                self._went_down(_reason(exc, self.url))
                raise self._failed(exc) from None
            raise StoreBusy(f"the PostgreSQL store {self.where} is busy: no connection was free within "
                            f"{WAIT_TIMEOUT:g} s") from None
        except ERRORS as exc:  # unless the connection was lost: a statement timeout, a deadlock, this request's
            raise self.refusal(exc) from exc

    def refusal(self, exc: Exception) -> StoreError:
        """The error a request gets for a database error: a statement timeout or a deadlock (unless the
        connection was lost) is StoreBusy, anything else StoreError."""
        busy = isinstance(exc, psycopg.OperationalError) and not self._down.is_set()
        return self._failed(exc, StoreBusy if busy else StoreError)

    def _failed(self, exc: Exception, kind: type[StoreError] = StoreError) -> StoreError:
        """The error a request that ``exc`` ended gets: the store, without its password, and psycopg's reason."""
        return kind(f"the PostgreSQL store {self.where} failed: {_reason(exc, self.url)}")

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
                    self._why = _reason(exc, self.url)
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
            raise self._failed(exc) from exc

    @contextmanager
    def dedicated(self) -> Iterator[_Cursor]:
        """A connection of its own (not the pool's) in one read-only snapshot, for a long read such as a
        model version's download, which would otherwise keep a request's connection for seconds."""
        if self._down.is_set():
            raise StoreError(f"the PostgreSQL store {self.where} is not answering: {self._why}")
        try:
            with psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT) as conn:
                conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
                yield _Cursor(conn)
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

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
