"""What an experiment measures, recorded in the ratings store so that its figures add up every API process.

A posted rating of a user in an experiment is recorded in the ratings' own
transaction (storage/steering.py): the arm, the version that served the user,
the prediction it made just before the rating was stored, and whether the
movie was in the last list shown to that user.  Lists served are counted in
memory and written by each process in one transaction a second (the version
watcher's poll), or at once before one of this process's own posts by that
user, so a GET of a list costs the store nothing.  The figures lag the lists
another process served by at most that second.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from serving.plan import Route
from storage.steering import Steering
from storage.store import Cursor

MAX_PENDING = 20_000  # users whose unwritten lists are kept while the store is away (then dropped)


@dataclass
class _Lists:
    arm: str
    count: int
    movies: np.ndarray
    shown_at: float


class Posting:
    """One post's experiment record, written inside the ratings' transaction (called with the cursor and the
    request's number); :meth:`failed` gives back the list it took when the transaction did not commit."""

    def __init__(self, log: ExperimentLog, route: Route, user: int, pairs: list[tuple[int, float]],
                 predicted: list[float]):
        self.log, self.route, self.user, self.pairs, self.predicted = log, route, user, pairs, predicted
        self._taken: _Lists | None = None

    def __call__(self, db: Cursor, seq: int) -> None:
        name, user = self.route.experiment, self.user
        self._taken = self.log.take(name, user)
        if self._taken is not None:  # this process's last list for the user first: it may be the newest
            t = self._taken
            Steering.write_lists(db, [(name, user, t.arm, t.count, t.movies, t.shown_at)])
        shown = Steering.last_list(db, name, user)
        Steering.write_ratings(db, [
            (name, seq, user, movie, self.route.arm, self.route.version, rating, predicted,
             None if shown is None else int(movie in shown))
            for (movie, rating), predicted in zip(self.pairs, self.predicted)])

    def failed(self) -> None:
        if self._taken is not None:
            self.log.give_back(self.route.experiment, self.user, self._taken)
            self._taken = None


class ExperimentLog:
    """This process's lists served in the running experiment, until written; thread-safe."""

    def __init__(self, steering: Steering):
        self.steering = steering
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], _Lists] = {}

    def shown(self, route: Route, user: int, movies: list[int]) -> None:
        """A list was served to ``user`` (counted when ``route`` is an experiment's, from the arm's version)."""
        if route.experiment is None or route.stand_in:
            return
        movies = np.asarray(movies, dtype=np.int64)  # 8 bytes a movie, not a Python int's 28
        with self._lock:
            key = (route.experiment, user)
            entry = self._pending.get(key)
            if entry is None:
                if len(self._pending) >= MAX_PENDING:
                    self._pending.pop(next(iter(self._pending)))
                self._pending[key] = _Lists(route.arm, 1, movies, time.time())
            else:
                entry.arm, entry.count, entry.movies, entry.shown_at = route.arm, entry.count + 1, movies, time.time()

    def posting(self, route: Route, user: int, pairs: list[tuple[int, float]],
                predicted: list[float]) -> Posting | None:
        """The record a post by ``user`` writes with its ratings (None outside an experiment, or when another
        version stands in for the arm's: its predictions are not the arm's)."""
        return None if route.experiment is None or route.stand_in else Posting(self, route, user, pairs, predicted)

    def take(self, experiment: str, user: int) -> _Lists | None:
        with self._lock:
            return self._pending.pop((experiment, user), None)

    def give_back(self, experiment: str, user: int, lists: _Lists) -> None:
        with self._lock:
            newer = self._pending.get((experiment, user))
            if newer is None:
                if len(self._pending) >= MAX_PENDING:
                    return  # the store has been away long enough: the oldest lists are not kept
                self._pending[(experiment, user)] = lists
            else:
                newer.count += lists.count

    def forget(self, user: int) -> None:
        """Drop ``user``'s unwritten lists (a forgotten user; storage/people.py deleted the written ones)."""
        with self._lock:
            for key in [k for k in self._pending if k[1] == user]:
                del self._pending[key]

    def flush(self) -> int:
        """Write every pending list in one transaction; how many users' lists it wrote.  When the store does
        not take them they stay pending (StoreError is raised)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            with self.steering.store.writing() as db:
                Steering.write_lists(db, [(e, u, t.arm, t.count, t.movies, t.shown_at)
                                          for (e, u), t in pending.items()])
        except BaseException:
            for (e, u), t in pending.items():
                self.give_back(e, u, t)
            raise
        return len(pending)
