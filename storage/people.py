"""People's data and what may be shown, in the ratings store: forgetting, withdrawn ratings, hidden movies.

* ``forgotten``: users who asked to be forgotten, with the request that did it.  Forgetting deletes the
  user's posted ratings, withdrawn ratings, hidden movies, token, Idempotency-Key answers and experiment
  records in one transaction; every later fit leaves the user's ratings in the dataset files out
  (engine.py), and ratings the user posts afterwards start afresh.
* ``unrated``: single ratings withdrawn (user, movie): the posted ones are deleted, one from the dataset
  files is left out of every later fit; a later rating of the movie counts again.
* ``hidden``: movies a user does not want to see in any list (``hidden`` 0 once shown again).
* ``movie_rules``: the operators' rules per movie (hidden, or available between two dates), JSON;
  ``rule`` NULL once cleared.

Each change takes a request number like a POST of ratings (``last_seq``), so API processes on every host
see it with the one freshness read they make per request and fold it in from ``Store.changes``, in order
with the ratings.  Rows are kept per key at their latest (a cleared rule or a movie shown again stays as a
row), which is what lets a process replay any suffix of them.
"""

from __future__ import annotations

import time
import uuid

from storage.store import NEXT_SEQ, PUT_META, RETRAIN_REQUESTED, TOKENS_GENERATION, Store

MAX_HIDDEN = 10_000  # hidden movies one user may keep


class NothingToChange(Exception):
    """The change asked for does not apply (not rated, not hidden, no rule): nothing was stored, and the
    transaction that found out rolled back (so it took no request number)."""


class TooMany(Exception):
    """A user would hide more than MAX_HIDDEN movies: nothing was stored."""


class People:
    """Forgetting, withdrawals, hidden movies and movie rules over one store."""

    def __init__(self, store: Store):
        self.store = store

    def forget(self, user: int) -> tuple[int, int, set[int]]:
        """Forget ``user`` in one transaction (see the module), and ask the trainer for a fit; (the request's
        number, posted rows deleted, the movies they were of)."""
        with self.store.writing() as db:
            seq = int(db.execute(NEXT_SEQ).fetchone()[0])
            now = time.time()  # once this holds the writers' lock: lists recorded while it waited are older
            movies = {int(r[0]) for r in db.execute('SELECT DISTINCT movie FROM ratings WHERE "user" = ?',
                                                    (user,)).fetchall()}
            removed = db.execute('DELETE FROM ratings WHERE "user" = ?', (user,)).rowcount
            for table in ("unrated", "hidden", "experiment_ratings", "experiment_lists"):
                db.execute(f'DELETE FROM {table} WHERE "user" = ?', (user,))
            db.execute("DELETE FROM idempotency WHERE scope = ?", (f"ratings:{user}",))
            if db.execute('DELETE FROM user_tokens WHERE "user" = ?', (user,)).rowcount:
                db.execute(PUT_META, (TOKENS_GENERATION, uuid.uuid4().hex))
            again = db.execute('SELECT 1 FROM forgotten WHERE "user" = ?', (user,)).fetchone() is not None
            db.execute('INSERT INTO forgotten ("user", seq, time) VALUES (?, ?, ?) ON CONFLICT ("user") '
                       "DO UPDATE SET seq = excluded.seq, time = excluded.time", (user, seq, now))
            if removed or not again:  # a fit soon, so the served files leave them out (not for each repeat)
                db.execute(PUT_META, (RETRAIN_REQUESTED, repr(now)))
        return seq, removed, movies

    def unrate(self, user: int, movie: int) -> int:
        """Withdraw ``user``'s rating of ``movie`` (posted or from the dataset); the request's number."""
        now = time.time()
        with self.store.writing() as db:
            seq = int(db.execute(NEXT_SEQ).fetchone()[0])
            db.execute('DELETE FROM ratings WHERE "user" = ? AND movie = ?', (user, movie))
            db.execute('INSERT INTO unrated ("user", movie, seq, time) VALUES (?, ?, ?, ?) ON CONFLICT ("user", movie) '
                       "DO UPDATE SET seq = excluded.seq, time = excluded.time", (user, movie, seq, now))
        return seq

    def hide(self, user: int, movies: list[int]) -> int:
        """Hide ``movies`` from every list ``user`` is shown; the request's number.  TooMany past MAX_HIDDEN."""
        now = time.time()
        with self.store.writing() as db:
            seq = int(db.execute(NEXT_SEQ).fetchone()[0])
            db.executemany('INSERT INTO hidden ("user", movie, seq, hidden, time) VALUES (?, ?, ?, 1, ?) '
                           'ON CONFLICT ("user", movie) DO UPDATE SET seq = excluded.seq, hidden = 1, '
                           "time = excluded.time", [(user, m, seq, now) for m in movies])
            count = db.execute('SELECT count(*) FROM hidden WHERE "user" = ? AND hidden = 1', (user,)).fetchone()[0]
            if count > MAX_HIDDEN:
                raise TooMany(f"a user may hide at most {MAX_HIDDEN} movies; this would make {count}")
        return seq

    def unhide(self, user: int, movie: int) -> int:
        """Show ``movie`` to ``user`` again; NothingToChange when it was not hidden."""
        with self.store.writing() as db:
            seq = int(db.execute(NEXT_SEQ).fetchone()[0])
            self._changed(db.execute('UPDATE hidden SET hidden = 0, seq = ?, time = ? WHERE "user" = ? AND movie = ? '
                                     "AND hidden = 1", (seq, time.time(), user, movie)))
        return seq

    def set_rule(self, movie: int, rule: str) -> int:
        """Set the operators' rule of ``movie`` (JSON); the request's number."""
        with self.store.writing() as db:
            seq = int(db.execute(NEXT_SEQ).fetchone()[0])
            db.execute("INSERT INTO movie_rules (movie, seq, rule, time) VALUES (?, ?, ?, ?) ON CONFLICT (movie) "
                       "DO UPDATE SET seq = excluded.seq, rule = excluded.rule, time = excluded.time",
                       (movie, seq, rule, time.time()))
        return seq

    def clear_rule(self, movie: int) -> int:
        """Clear the rule of ``movie``; NothingToChange when it has none."""
        with self.store.writing() as db:
            seq = int(db.execute(NEXT_SEQ).fetchone()[0])
            self._changed(db.execute("UPDATE movie_rules SET rule = NULL, seq = ?, time = ? WHERE movie = ? "
                                     "AND rule IS NOT NULL", (seq, time.time(), movie)))
        return seq

    @staticmethod
    def _changed(cursor) -> None:
        if not cursor.rowcount:
            raise NothingToChange()

    # --- what a fit leaves out --------------------------------------------------------------

    def excluded(self) -> tuple[set[int], set[tuple[int, int]]]:
        """The users forgotten and the (user, movie) ratings withdrawn, as the store holds them now: every
        fit leaves their ratings in the dataset files out (posted ones are deleted already)."""
        with self.store.reading() as db:
            users = {int(r[0]) for r in db.execute('SELECT "user" FROM forgotten').fetchall()}
            pairs = {(int(u), int(m)) for u, m in db.execute('SELECT "user", movie FROM unrated').fetchall()}
        return users, pairs

    def last_exclusion(self) -> int:
        """The request number of the newest forget or withdrawal (a repeat of one takes a new number too)."""
        with self.store.reading() as db:
            return int(db.execute('SELECT max(s) FROM (SELECT coalesce(max(seq), 0) AS s FROM forgotten '
                                  'UNION ALL SELECT coalesce(max(seq), 0) FROM unrated) AS t').fetchone()[0])
