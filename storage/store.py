"""The ratings store's one interface, whatever database holds it: posted ratings, shared settings, user tokens.

Two backends implement it: :mod:`storage.sqlite` (a file in the model folder,
the default: every process on one host) and :mod:`storage.postgres` (a
PostgreSQL server: API processes and a trainer on several hosts).  Both keep the
same promises, which ``tests/test_store_contract.py`` checks on each:

* a request is acknowledged only once it is committed, and one that fails
  leaves nothing behind and takes no request number (the ratings requests a
  process takes at once share one transaction, each in a savepoint of its own:
  :mod:`storage.group`);
* request numbers come from the database inside the writing transaction (the
  ``last_seq`` row, updated first, so its row lock orders the writers): they
  never collide and grow in commit order, so a reader that has seen request N
  has seen every request before it (what lets API processes fold in each
  other's writes: each asks for the rows after the last request it has seen);
* a later rating of the same user and movie wins;
* compaction deletes replaced rows in short transactions.

The SQL below is shared: ``?`` placeholders (the PostgreSQL backend turns them
into its own) and ``"user"`` quoted, as PostgreSQL reserves the word.  A backend
supplies a write transaction, a read cursor and its own schema.
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from storage.errors import StoreBusy, StoreError  # noqa: F401 - every other module imports them from here
from storage.group import GroupCommit

log = logging.getLogger(__name__)

TRAINER_STATUS, RETRAIN_REQUESTED = "trainer", "retrain_requested"  # meta keys
PUBLISHED = "published"  # meta key: {version number: the last request it covers}, the versions fitted on this store
TOKENS_GENERATION = "tokens_generation"  # meta key: changes with every token issued or revoked
KEEP_RECORDS = 100  # published versions the store remembers (far more than any folder keeps)
IDEMPOTENCY_SECONDS = 24 * 3600  # how long an Idempotency-Key's answer is kept
COMPACT_BATCH = 500  # replaced rows one compaction transaction deletes (by key: a few ms at most)

NEXT_SEQ = ("UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) WHERE key = 'last_seq' "
            "RETURNING value")
PUT_META = "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
# The newest rating of each (user, movie) with seq <= ?: what users have posted, as of a request.
LATEST = """
SELECT "user", movie, rating, seq FROM ratings AS r WHERE seq <= ? AND NOT EXISTS (
    SELECT 1 FROM ratings AS n WHERE n."user" = r."user" AND n.movie = r.movie AND n.seq > r.seq AND n.seq <= ?)
ORDER BY "user", movie
"""
REPLACED = """
SELECT seq, movie FROM ratings AS r WHERE seq <= ? AND EXISTS (
    SELECT 1 FROM ratings AS n WHERE n."user" = r."user" AND n.movie = r.movie AND n.seq > r.seq AND n.seq <= ?)
"""
# Everything after a request, and the last request it includes, in one statement (one snapshot: nothing
# committed in between is half-seen), in request order: ratings (kind 0), users forgotten (1), ratings
# withdrawn (2), a user's hidden movies (3, ``value`` 1 hidden, 0 shown again) and operators' movie rules
# (4, ``rule`` JSON, NULL when cleared).  Forgetting and withdrawing delete the posted rows they replace,
# and the others are one row per key at its latest, so any suffix replayed in order gives the state now.
_BRANCHES = (  # one per kind, in kind order: (kind, movie, value, rule, table)
    ("0", "movie", "rating", "CAST(NULL AS TEXT)", "ratings"),
    ("1", "CAST(NULL AS BIGINT)", "CAST(NULL AS DOUBLE PRECISION)", "CAST(NULL AS TEXT)", "forgotten"),
    ("2", "movie", "CAST(NULL AS DOUBLE PRECISION)", "CAST(NULL AS TEXT)", "unrated"),
    ("3", "movie", "CAST(hidden AS DOUBLE PRECISION)", "CAST(NULL AS TEXT)", "hidden"),
    ("4", "movie", "CAST(NULL AS DOUBLE PRECISION)", "rule", "movie_rules"),
)


def _branch(kind: str, movie: str, value: str, rule: str, table: str) -> str:
    user = "CAST(NULL AS BIGINT)" if table == "movie_rules" else '"user"'
    return f"SELECT seq, {kind} AS kind, {user} AS \"user\", {movie} AS movie, {value} AS value, {rule} AS rule " \
           f"FROM {table} WHERE seq > ?"


def _changes_sql(kinds: tuple[int, ...]) -> str:
    return ("SELECT m.upto, r.kind, r.\"user\", r.movie, r.value, r.rule FROM (\n"
            "    SELECT CAST(value AS BIGINT) AS upto FROM meta WHERE key = 'last_seq') AS m\nLEFT JOIN (\n    "
            + "\n    UNION ALL ".join(_branch(*_BRANCHES[k]) for k in kinds)
            + "\n) AS r ON r.seq <= m.upto ORDER BY r.seq, r.kind")


RATING, FORGOTTEN, UNRATED, HIDDEN, RULE = range(5)  # the kinds of change
EVERY_KIND = (RATING, FORGOTTEN, UNRATED, HIDDEN, RULE)
SHOWN = (HIDDEN, RULE)  # what may be shown, whatever the version: read whole when a process starts
CHANGES = {kinds: _changes_sql(kinds) for kinds in (EVERY_KIND, SHOWN)}


class Replayed(Exception):
    """A write carried an Idempotency-Key seen before: nothing was stored, ``answer`` is the first answer
    (``matches``: whether the request was the same as the first, by fingerprint)."""

    def __init__(self, answer: dict, matches: bool):
        super().__init__("replayed")
        self.answer = answer
        self.matches = matches


@dataclass(frozen=True)
class Once:
    """An Idempotency-Key on a write: ``scope`` (whose keys: "ratings:7", "users"), the client's ``key`` and
    a ``fingerprint`` of the request (a key reused with another request is refused)."""

    scope: str
    key: str
    fingerprint: str


@dataclass(frozen=True)
class Entry:
    """One acknowledged request: a user's ratings as (movie, rating) pairs."""

    seq: int
    user: int
    ratings: tuple[tuple[int, float], ...]
    time: float


@dataclass
class UserChange:
    """What changed for one user after a request: ``forgotten`` (everything the user had before is gone),
    then ``unrated`` movies withdrawn, then ``ratings`` (movie -> newest rating) and ``hidden`` (movie ->
    hidden or shown again) over what is left."""

    forgotten: bool = False
    unrated: set[int] = field(default_factory=set)
    ratings: dict[int, float] = field(default_factory=dict)
    hidden: dict[int, bool] = field(default_factory=dict)


@dataclass
class Changes:
    """Everything after a request, per user, and the operators' movie rules changed (movie -> rule JSON,
    None when cleared)."""

    users: dict[int, UserChange] = field(default_factory=dict)
    rules: dict[int, str | None] = field(default_factory=dict)

    def ratings(self) -> dict[int, dict[int, float]]:
        """user -> movie -> newest rating posted (forgetting and withdrawals aside)."""
        return {u: c.ratings for u, c in self.users.items() if c.ratings}

    def add(self, kind: int, user: int | None, movie: int | None, value, rule: str | None) -> None:
        """Fold one CHANGES row in, in request order."""
        if kind == RULE:
            self.rules[movie] = rule
            return
        change = self.users.setdefault(user, UserChange())
        if kind == RATING:
            change.ratings[movie] = value
            change.unrated.discard(movie)
        elif kind == FORGOTTEN:
            self.users[user] = UserChange(forgotten=True)
        elif kind == UNRATED:
            change.ratings.pop(movie, None)
            change.unrated.add(movie)
        else:
            change.hidden[movie] = bool(value)


class TrainerClaim:
    """A trainer's hold on a store: ``held()`` says whether it still has it (checked at every heartbeat),
    ``release()`` lets go.  A file store has nothing to hold beyond the folder's lock."""

    def held(self) -> bool:
        return True

    def release(self) -> None:
        return None


class Cursor(Protocol):
    """What the shared SQL runs on: ``execute`` and ``executemany`` returning an object with ``fetchone``,
    ``fetchall`` and ``rowcount`` (a sqlite3 connection as it is; psycopg's wrapped)."""

    def execute(self, sql: str, params: tuple | list = ()) -> Any: ...

    def executemany(self, sql: str, rows: list) -> Any: ...


class Store(ABC):
    """Posted ratings and shared settings; :meth:`append` returns only once the request is committed."""

    kind: str  # "sqlite" or "postgresql"
    store_id: str
    where: str  # for messages: the file, or the URL without its password
    compact_pause = 0.0  # seconds between compaction transactions (SQLite's writers wait in a busy handler)
    driver_errors: tuple[type[Exception], ...] = ()  # the database driver's errors (a request's own failure)
    lock_row = ""  # appended to a SELECT that must hold its row for the transaction (PostgreSQL: FOR UPDATE)

    def __init__(self) -> None:
        # This process's ratings requests, grouped; ``writing`` looked up at each group (fault injection patches it).
        self.group = GroupCommit(lambda: self.writing(), self.refusal, self.driver_errors)

    # --- what a backend supplies ------------------------------------------------------------

    @abstractmethod
    def writing(self) -> AbstractContextManager[Cursor]:
        """One write transaction: committed when the block ends, rolled back (StoreError) on any error."""

    @abstractmethod
    def reading(self) -> AbstractContextManager[Cursor]:
        """A cursor for reads (StoreError when the database cannot answer)."""

    def dedicated(self) -> AbstractContextManager[Cursor]:
        """A cursor for a long read (a model version's download) that must not hold a connection requests
        need: PostgreSQL opens one of its own; SQLite's readers are per thread already."""
        return self.reading()

    @abstractmethod
    def describe(self) -> dict:
        """Where the store is and how big, for the status page (no password)."""

    @abstractmethod
    def close(self) -> None: ...

    def trainer_lock(self) -> TrainerClaim | None:
        """Hold the store's trainer lock for this process, or None when another trainer has it.  A file
        store's processes share the model folder, whose ``trainer.lock`` is enough."""
        return TrainerClaim()

    # --- writes ---------------------------------------------------------------------------

    def append(self, user: int, ratings: list[tuple[int, float]], once: Once | None = None,
               answer: dict | None = None, also: Callable[[Cursor, int], None] | None = None) -> Entry:
        """Store one request; the caller may acknowledge once this returns (it is committed).

        Requests this process takes at once share one transaction (:mod:`storage.group`), each in a
        savepoint of its own.  With ``once``, ``answer`` is kept with the ratings, and a request whose
        key was seen within IDEMPOTENCY_SECONDS stores nothing and raises Replayed with the first answer.
        ``also(cursor, seq)`` writes what goes with the ratings (an experiment's record) in their transaction.
        Raises StoreError, with nothing stored, when the request or its group's commit fails; an error
        ``also`` raises (not the database's) as it is, with nothing of this request stored.
        """
        now = time.time()

        def write(db: Cursor) -> Entry:
            seq = int(db.execute(NEXT_SEQ).fetchone()[0])  # first: its row lock orders duplicates too
            if once is not None:
                self._first_time(db, once, now)
            db.executemany('INSERT INTO ratings (seq, "user", movie, rating, time) VALUES (?, ?, ?, ?, ?)',
                           [(seq, user, m, r, now) for m, r in ratings])
            if also is not None:
                also(db, seq)
            if once is not None:
                self._remember(db, once, answer or {}, now)
            return Entry(seq, user, tuple(ratings), now)

        return self.group.submit(write)

    def refusal(self, exc: Exception) -> StoreError:
        """A database error that ended one request, as the StoreError it gets (backends name the store)."""
        return StoreError(f"could not store the ratings: {exc}")

    def _first_time(self, db: Cursor, once: Once, now: float) -> None:
        """Inside a write transaction that holds the writers' lock: raise Replayed when ``once``'s key has an
        answer younger than IDEMPOTENCY_SECONDS (the request's savepoint, or transaction, then rolls back:
        nothing stored); drop older answers."""
        db.execute("DELETE FROM idempotency WHERE time < ?", (now - IDEMPOTENCY_SECONDS,))
        row = db.execute("SELECT fingerprint, answer FROM idempotency WHERE scope = ? AND key = ?",
                         (once.scope, once.key)).fetchone()
        if row is not None:
            raise Replayed(json.loads(row[1]), row[0] == once.fingerprint)

    @staticmethod
    def _remember(db: Cursor, once: Once, answer: dict, now: float) -> None:
        db.execute("INSERT INTO idempotency (scope, key, fingerprint, answer, time) VALUES (?, ?, ?, ?, ?)",
                   (once.scope, once.key, once.fingerprint, json.dumps(answer), now))

    def put_meta(self, key: str, value: str) -> None:
        """Set one shared setting (the trainer's status, a retrain request)."""
        with self.writing() as db:
            db.execute(PUT_META, (key, value))

    def new_user(self, floor: int, taken: Callable[[int], bool], once: Once | None = None) -> int:
        """A user id no one has: at least ``floor``, above every id handed out before by any process, with
        no stored rating, never forgotten, no hidden or withdrawn movie, and not ``taken(id)`` (ratings the
        caller knows of).  With ``once``, a key seen before raises Replayed with the id handed out then."""
        now = time.time()
        with self.writing() as db:
            db.execute("INSERT INTO meta VALUES ('next_user', '0') ON CONFLICT (key) DO NOTHING")
            row = db.execute("SELECT value FROM meta WHERE key = 'next_user'" + self.lock_row).fetchone()
            if once is not None:
                self._first_time(db, once, now)
            user = max(floor, int(row[0]))
            while taken(user) or db.execute('SELECT 1 FROM ratings WHERE "user" = ? LIMIT 1', (user,)).fetchone() \
                    or any(db.execute(f'SELECT 1 FROM {t} WHERE "user" = ? LIMIT 1', (user,)).fetchone()
                           for t in ("forgotten", "hidden", "unrated")):
                user += 1
            db.execute(PUT_META, ("next_user", str(user + 1)))
            if once is not None:
                self._remember(db, once, {"user": user}, now)
        return user

    def record_version(self, number: int, seq: int) -> None:
        """Remember that version ``number`` was fitted on this store's requests up to ``seq`` (the trainer,
        once it is published): :meth:`covered` then trusts the version's ``seq``."""
        with self.writing() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?" + self.lock_row, (PUBLISHED,)).fetchone()
            published = json.loads(row[0]) if row else {}
            published[str(number)] = seq
            kept = dict(sorted(published.items(), key=lambda kv: int(kv[0]))[-KEEP_RECORDS:])
            db.execute(PUT_META, (PUBLISHED, json.dumps(kept)))

    def covered(self, meta: dict) -> int | None:
        """The last of this store's requests a version (its version.json) was trained on, or None when the
        version was not fitted on this store as it is now: another store's (a deleted ``ratings.db``, a
        move to PostgreSQL), or a store restored from a backup taken before the version was published,
        whose request numbers after the backup mean other requests.  Such a version is served with every
        rating the store holds folded in, and the trainer fits a new one."""
        if meta.get("store_id") != self.store_id:
            return None
        published = json.loads(self.get_meta(PUBLISHED) or "{}")
        seq = published.get(str(meta.get("version")))
        return int(seq) if seq is not None and seq == meta.get("seq") else None

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

        The replaced rows are found with a plain read, which takes no lock (a row
        replaced as of ``upto`` stays replaced: the newest one never goes), then
        deleted by key in transactions of COMPACT_BATCH rows, so a POST waits a few
        milliseconds at most.  Returns the number of rows deleted; :meth:`latest`
        as of ``upto`` or later does not change.
        """
        with self.reading() as db:
            keys = [tuple(k) for k in db.execute(REPLACED, (upto, upto)).fetchall()]
        deleted = 0
        for start in range(0, len(keys), COMPACT_BATCH):
            with self.writing() as db:
                deleted += db.executemany("DELETE FROM ratings WHERE seq = ? AND movie = ?",
                                          keys[start:start + COMPACT_BATCH]).rowcount
            if self.compact_pause:
                time.sleep(self.compact_pause)
        if deleted:
            log.info("ratings store: %d replaced rating(s) compacted", deleted)
        return deleted

    # --- reads ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self.reading() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def retrain_requested(self) -> float | None:
        """When a fit was last asked for (Unix time), or None."""
        value = self.get_meta(RETRAIN_REQUESTED)
        return float(value) if value else None

    def trainer_status(self) -> dict | None:
        value = self.get_meta(TRAINER_STATUS)
        return json.loads(value) if value else None

    def tokens_generation(self) -> str | None:
        """A value that changes whenever a user token is issued or revoked (storage/tokens.py caches them)."""
        return self.get_meta(TOKENS_GENERATION)

    @property
    def last_seq(self) -> int:
        """The last acknowledged request, by any process."""
        return int(self.get_meta("last_seq") or 0)

    def changes(self, after: int, kinds: tuple[int, ...] = EVERY_KIND) -> tuple[int, Changes]:
        """Everything after request ``after`` (ratings newest per user and movie, users forgotten, ratings
        withdrawn, hidden movies, movie rules: see CHANGES), or only those ``kinds``, and the last request
        it includes."""
        with self.reading() as db:
            rows = db.execute(CHANGES[kinds], (after,) * len(kinds)).fetchall()
        changes = Changes()
        for _, kind, user, movie, value, rule in rows:
            if kind is not None:
                changes.add(int(kind), user, movie, value, rule)
        return (int(rows[0][0]) if rows else after), changes

    def latest(self, upto: int) -> Iterator[tuple[int, list[tuple[int, float]], int]]:
        """Every posting user's newest ratings as of request ``upto``: (user, [(movie, rating)], last seq)."""
        with self.reading() as db:
            rows = db.execute(LATEST, (upto, upto)).fetchall()
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
        with self.reading() as db:
            return db.execute("SELECT count(*) FROM ratings WHERE seq > ?", (seq,)).fetchone()[0]

    def first_time_after(self, seq: int) -> float | None:
        """When the first rating after request ``seq`` was posted (Unix time), or None."""
        with self.reading() as db:
            return db.execute("SELECT min(time) FROM ratings WHERE seq > ?", (seq,)).fetchone()[0]

    def entries(self) -> list[Entry]:
        """Every stored request, in order (for tools and tests)."""
        out: dict[int, Entry] = {}
        with self.reading() as db:
            rows = db.execute('SELECT seq, "user", movie, rating, time FROM ratings ORDER BY seq, movie').fetchall()
        for seq, user, movie, rating, t in rows:
            e = out.get(seq)
            out[seq] = Entry(seq, user, (e.ratings if e else ()) + ((movie, rating),), t)
        return list(out.values())
