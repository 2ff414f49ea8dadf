"""The serving side: answers every query from the published model version, in milliseconds, without Spark.

An API process holds one :class:`Recommender`.  It serves the versions the
serving plan names (serving/plan.py: the pinned one or the newest that the
versions folder's CURRENT names, and a running experiment's arms), loaded and
swapped in whole by serving/loader.py (NumPy arrays: the models, the catalogue
and users' ratings).  Every answer goes through :meth:`Recommender.routed`,
which picks the user's version and folds in every rating posted since, by this
process or any other on the same store: it compares the store's last request
number with the last one folded in (one indexed read) and folds in what is new.
So a GET issued after a POST was acknowledged anywhere reflects it.  Results are
plain dataclasses; app.py shapes the JSON.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.diversity import pool_size, rerank
from serving.errors import InputError, StoreUnavailable, Unavailable
from serving.experiments import ExperimentLog
from serving.explain import because
from serving.lists import NO_FILTERS, ListFilters, allowed, choose, empty_reason
from serving.loader import Loader
from serving.plan import Route
from serving.quality import LiveQuality
from serving.shelf import Shelf
from serving.state import Served
from serving.status import Health
from serving.validation import check_ratings, check_user
from storage.backends import open_store
from storage.shipping import shared_versions
from storage.steering import Steering
from storage.store import Once, Replayed, Store, StoreError
from storage.versions import ModelVersions

log = logging.getLogger(__name__)

MAX_EXPLAINED = 100  # movies of one list that explain=1 explains (the rest carry no because)
POLL_SECONDS = 1.0  # how often the pointer to the current version is read


@dataclass(frozen=True)
class Movie:
    movie_id: int
    title: str
    genres: tuple[str, ...]
    ratings_count: int


@dataclass(frozen=True)
class Scored:
    """A movie in a list: the clipped star prediction, and the ranking model's score the list is ordered
    by (None in the popular fallback, which is ordered by the movie's ratings count)."""

    movie: Movie
    predicted_rating: float
    ranking_score: float | None
    because: list[tuple[Movie, float]] | None = None  # with explain: the user's rated movies that did most


@dataclass(frozen=True)
class TopN:
    user: int
    movies: list[Scored]
    route: Route  # the version that answered, and why (an experiment's arm)
    fallback: str | None  # "popular" for a user the models know nothing about
    reason: str | None = None  # why the list is empty, when it is

    @property
    def version(self) -> int:
        return self.route.version


@dataclass(frozen=True)
class Ack:
    """A stored write's answer: ``body`` as first given, ``replayed`` when an Idempotency-Key was seen before
    and nothing was stored this time."""

    body: dict
    replayed: bool = False


class KeyReused(InputError):
    """An Idempotency-Key already used for another request."""

    def __init__(self):
        super().__init__("this Idempotency-Key was used for another request in the last 24 hours: "
                         "use a new key for a new request", 422)


@dataclass(frozen=True)
class Prediction:
    user: int
    movie: Movie
    predicted_rating: float
    user_rating: float | None
    route: Route

    @property
    def version(self) -> int:
        return self.route.version


class Recommender:
    """The versions in service plus posted ratings folded in; see the module's docstring."""

    def __init__(self, model_dir: Path, store: Store | None = None, poll: float = POLL_SECONDS):
        self.model_dir = Path(model_dir)
        self.store = store or open_store(None, self.model_dir)
        self.steering = Steering(self.store)
        self.versions = ModelVersions(self.model_dir, protect=self.steering.protected)
        # PostgreSQL: versions arrive from the database
        self.loader = Loader(self.versions, self.store, shared_versions(self.store))
        self.loader.on_store_trouble = self._store_trouble
        self.loader.on_store_back = self._store_back
        self.poll = poll
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.quality = LiveQuality()  # how the versions do on the ratings posted here
        self.experiments = ExperimentLog(self.steering)  # the same, per experiment arm, in the store
        self._store_down = False  # the last read of the store failed (said once in the log)
        self._health = Health(self.store, self.quality)
        self.loader.on_forgotten = self._forgotten

    def _forgotten(self, users: list[int], upto: int) -> None:
        """Users forgotten (here or on any process) by requests up to ``upto``: this process's own records of
        them go too."""
        for user in users:
            self.quality.forget(user, upto)
            self.experiments.forget(user)

    # --- versions ----------------------------------------------------------------------------

    shared = property(lambda self: self.loader.shared, lambda self, v: setattr(self.loader, "shared", v))
    clock = property(lambda self: self.loader.clock, lambda self, v: setattr(self.loader, "clock", v))
    load_error = property(lambda self: self.loader.load_error)

    @property
    def shelf(self) -> Shelf:
        """Hidden movies and movie rules, as of the last request folded in."""
        return self.loader.shelf

    def start(self, watch: bool = True) -> Recommender:
        """Load what the serving plan serves, if anything is published, and (``watch``) follow it from now on."""
        self.refresh()
        if watch:
            self._watcher = threading.Thread(target=self._watch, name="version-watcher", daemon=True)
            self._watcher.start()
        return self

    def _watch(self) -> None:
        # Before the first version every tenth of a second: a fresh start's first answer waits on this.
        while not self._stopping.wait(self.poll if self.loader.view is not None else min(self.poll, 0.1)):
            try:
                self.refresh()
            except Exception:  # keep serving what is loaded; the next poll tries again
                log.exception("could not check for a new model version")
            try:
                self.experiments.flush()  # the lists served in the experiment since the last poll
            except StoreError as exc:  # kept, and written once the store answers
                self._store_trouble(exc)

    def refresh(self) -> bool:
        """Follow the serving plan and the newest version: load what they serve; whether anything changed."""
        return self.loader.refresh()

    def current(self) -> Served:
        """The version that answers outside an experiment, with every acknowledged rating folded in."""
        return self.routed(None)[0]

    def routed(self, user: int | None) -> tuple[Served, Route]:
        """The version that answers ``user`` (None: no user in particular) with every acknowledged rating
        folded in, and why it does; Unavailable before the first version.  Every answer goes through here."""
        view = self.loader.view
        if view is None:
            raise Unavailable("no model has been published yet: the trainer is fitting the first one")
        try:  # one read per request: what any process acknowledged before this request began is in the answer
            view = self.loader.sync()
            self._store_down = False
        except StoreError as exc:  # no process can write either: answer from memory
            self._store_trouble(exc)
        return view.route(user)

    def _store_trouble(self, exc: StoreError) -> None:
        """Say once per outage that the store is not answering (every request and every poll meets it)."""
        if not self._store_down:
            log.warning("%s; answering from memory until it is back", exc)
        self._store_down = True

    def _store_back(self) -> None:
        self._store_down = False

    @property
    def version(self) -> int | None:
        """The version that answers outside an experiment (pinned or newest), None before the first."""
        view = self.loader.view
        return None if view is None else view.default.version

    def close(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(10)
        try:
            self.experiments.flush()
        except StoreError as exc:
            log.warning("could not record the last lists served in the experiment: %s", exc)
        self.loader.close()
        self.store.close()

    # --- queries -------------------------------------------------------------------------------

    @staticmethod
    def movie_at(served: Served, row: int, counts: np.ndarray | None = None) -> Movie:
        c = served.catalogue
        return Movie(int(c.movie_ids[row]), c.titles[row], c.genres[row],
                     int((served.counts if counts is None else counts)[row]))

    def recommend(self, user: int, count: int, min_count: int = 25, genre: str | None = None,
                  filters: ListFilters = NO_FILTERS, explain: bool = False, diversify: float = 0.0,
                  batch: bool = False) -> TopN:
        """Top ``count`` movies the user has not rated, among movies with at least ``min_count`` ratings
        that pass ``filters`` (or one ``genre``), the operators' rules and the user's hidden movies.

        The ranking model orders them (``ranking_score``, unclipped); each shows
        its ``predicted_rating`` (ALS blended with the neighbourhood of the
        user's ratings), clipped to the scale.  A user the models know nothing
        about gets the most-rated movies, marked ``fallback: popular``.  An empty
        list says why (``reason``).  ``explain``: each movie says ``because`` of
        which of the user's ratings (serving/explain.py); ``diversify`` (0 to 1)
        re-ranks the best candidates by maximal marginal relevance (serving/diversity.py).  ``batch``: a batch
        job's list (batch.py), from the version in service outside any experiment, and not counted as shown.
        """
        if not 0 <= diversify <= 1:
            raise InputError(f"diversify must be between 0 and 1, not {diversify}")
        if genre:
            filters = ListFilters(filters.exclude, (genre,), filters.exclude_genres, filters.years)
        served, route = self.routed(None if batch else user)
        snapshot = served.snapshot
        rated = served.ratings_of(user)
        rated_rows = rated.rows if rated is not None else None
        rows = choose(served, self.shelf, user, min_count, filters, rated_rows)
        vectors = snapshot.user_vectors(user)
        rows, scores = snapshot.top_n(vectors, rows, pool_size(count, diversify), served.counts)
        if diversify:
            rows, scores = rerank(snapshot.rank_unit, rows, scores, count, diversify)
        predicted = snapshot.predicted_ratings(vectors, rows, rated=_pairs(rated))
        reasons = [None] * len(rows)
        if explain:  # the first MAX_EXPLAINED movies: a table of list rows x rated movies bounds the cost
            reasons = [[(self.movie_at(served, r), v) for r, v in these] for these in
                       because(snapshot, vectors, *(_pairs(rated) or (np.zeros(0), np.zeros(0))), rows[:MAX_EXPLAINED])]
            reasons += [None] * (len(rows) - len(reasons))
        movies = [Scored(self.movie_at(served, r), round(float(p), 4), None if vectors is None else float(s), why)
                  for r, p, s, why in zip(rows.tolist(), predicted.tolist(), scores.tolist(), reasons)]
        reason = None if movies else empty_reason(served, self.shelf, user, min_count, filters, rated_rows)
        if movies and not batch:
            shown = [s.movie.movie_id for s in movies]
            self.quality.shown(user, shown)
            self.experiments.shown(route, user, shown)
        return TopN(user, movies, route, "popular" if vectors is None else None, reason)

    def predict(self, user: int, movie: int) -> Prediction:
        """The predicted rating of one movie for one user, and the user's own rating if any."""
        served, route = self.routed(user)
        row = served.row(movie)
        snapshot = served.snapshot
        rated = served.ratings_of(user)
        score = snapshot.predicted_ratings(snapshot.user_vectors(user), np.array([row]), rated=_pairs(rated))[0]
        own = None
        if rated is not None:
            hit = np.flatnonzero(rated.rows == row)
            own = float(rated.ratings[hit[0]]) if hit.size else None
        return Prediction(user, self.movie_at(served, row), round(float(score), 4), own, route)

    def rated(self, user: int) -> list[tuple[Movie, float]]:
        """The user's rated movies and ratings, by movie id."""
        served, _ = self.routed(user)
        ratings = served.ratings_of(user)
        if ratings is None:
            return []
        return [(self.movie_at(served, r), v) for r, v in zip(ratings.rows.tolist(), ratings.ratings.tolist())]

    def search(self, query: str, limit: int = 20) -> list[Movie]:
        """Movies whose title contains ``query`` (case-insensitive), most rated first."""
        needle = query.strip().lower()
        if not needle:
            raise InputError("q must not be empty")
        served = self.current()
        shown = allowed(served, self.shelf, None)  # the operators' rules: a withdrawn movie is not offered
        return [self.movie_at(served, r) for r in served.catalogue.search(needle, served.counts, limit, shown)]

    def movie(self, movie: int) -> tuple[Movie, float | None]:
        """A catalogue entry and its mean rating (None when nobody rated it)."""
        served = self.current()
        row = served.row(movie)
        counts, sums = served.tallies  # one pair: never a new count over an old sum
        count = int(counts[row])
        return self.movie_at(served, row, counts), (round(float(sums[row] / count), 4) if count else None)

    def similar(self, movie: int, count: int = 10, min_count: int = 25) -> list[tuple[Movie, float]]:
        """Movies most like the given one (see ``Snapshot.similar``), among those with ``min_count`` ratings."""
        return self.similar_for(None, movie, count, min_count)[0]

    def similar_for(self, user: int | None, movie: int, count: int = 10, min_count: int = 25,
                    filters: ListFilters = NO_FILTERS) -> tuple[list[tuple[Movie, float]], Route]:
        """:meth:`similar` from the version that serves ``user`` (None: outside any experiment), among movies
        that pass ``filters``, the operators' rules and the user's hidden movies; and why that version."""
        served, route = self.routed(user)
        row = served.row(movie)
        rows, sims = served.snapshot.similar(row, choose(served, self.shelf, user, min_count, filters), count)
        return [(self.movie_at(served, r), round(float(s), 4)) for r, s in zip(rows.tolist(), sims.tolist())], route

    # --- writes --------------------------------------------------------------------------------

    def add_ratings(self, user: int, pairs: list[tuple[int, float]], labels: list[str] | None = None,
                    key: str | None = None) -> Ack:
        """Durably store a user's ratings (all or nothing) and fold them in; the answer names the version in
        service.  With an Idempotency-Key ``key`` seen for this user in the last 24 hours, nothing is stored
        and the first answer comes back (``replayed``).

        Returns only after the store committed them; a rejected or failed
        request changes nothing.
        """
        check_user(user)
        served, route = self.routed(user)
        rows = np.array(check_ratings(served.catalogue, served.scale, pairs, labels), dtype=np.int64)
        snapshot, rated = served.snapshot, served.ratings_of(user)
        predicted = snapshot.predicted_ratings(snapshot.user_vectors(user), rows, rated=_pairs(rated)).tolist()
        body = {"user": user, "accepted": len(pairs), "model_version": served.number, **route_json(route)}
        once = None if key is None else Once(f"ratings:{user}", key, fingerprint(sorted(pairs)))
        record = self.experiments.posting(route, user, pairs, predicted)
        try:
            entry = self.store.append(user, pairs, once, body, record)
        except Exception as exc:  # nothing stored: the experiment's lists the record took go back
            if record is not None:
                record.failed()
            if isinstance(exc, Replayed):
                return self._replay(exc)
            if not isinstance(exc, StoreError):
                raise  # a bug in what goes along
            log.error("%s", exc)
            raise StoreUnavailable("the ratings could not be stored; nothing was saved, try again later") from None
        self.quality.posted(served.number, user, [m for m, _ in pairs], predicted, [r for _, r in pairs], entry.seq)
        self.current()  # folded in before the answer
        return Ack(body)

    @staticmethod
    def _replay(again: Replayed) -> Ack:
        if not again.matches:
            raise KeyReused()
        return Ack(again.answer, replayed=True)

    def new_user(self, key: str | None = None) -> Ack:
        """The next free user id (above every user the version knows), handed out once across processes;
        with an Idempotency-Key seen in the last 24 hours, the id handed out then."""
        served = self.current()
        users = served.histories.users
        try:
            user = self.store.new_user(int(users.max()) + 1 if len(users) else 1,
                                       lambda u: served.ratings_of(u) is not None,
                                       None if key is None else Once("users", key, fingerprint("new user")))
        except Replayed as again:
            return self._replay(again)
        except StoreError as exc:
            log.error("could not hand out a user id: %s", exc)
            raise StoreUnavailable("a new user id could not be stored; try again later") from None
        return Ack({"user": user})

    def request_retrain(self) -> float:
        """Ask the trainer for a fit on every stored rating now; returns when it was asked."""
        try:
            return self.store.request_retrain()
        except StoreError as exc:
            log.error("could not record the retrain request: %s", exc)
            raise StoreUnavailable("the retrain request could not be stored; try again later") from None

    def status(self) -> dict:
        """What /health reports (serving/status.py's ``health``)."""
        served, route = self.routed(None)
        return self._health.read(served, route, self.loader.view)


def route_json(route: Route) -> dict:
    """What an answer says of an experiment: its name and the user's arm (nothing outside one)."""
    return {} if route.experiment is None else {"experiment": route.experiment, "arm": route.arm}


def fingerprint(request) -> str:
    """What identifies a write's request for an Idempotency-Key (a key reused with another one is refused)."""
    return hashlib.sha256(repr(request).encode()).hexdigest()


def _pairs(ratings) -> tuple[np.ndarray, np.ndarray] | None:
    return None if ratings is None else (ratings.rows, ratings.ratings)
