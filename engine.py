"""RecommendationEngine: MovieLens data in Spark, two ALS models, answers from in-memory factors.

Spark loads the dataset and trains the rating and the ranking model
(training.py); their factors are kept as NumPy arrays in the driver
(serving.Snapshot), so every query is answered in milliseconds without a Spark
job.  Posted ratings are appended to an fsync'd log (ratings_log.py), folded
into the user's vectors at once, and trigger a full retrain in the background
that swaps the snapshot atomically when done.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets import movielens
from model import ModelError, ModelParams, Models, Scale
from ratings_log import Entry, Position, RatingsLog
from serving import Snapshot, candidates
from training import collect_ratings, fit_models, phase

log = logging.getLogger(__name__)

MAX_ID = 2**31 - 1  # pyspark.mllib keeps ids as 32-bit ints
RETRAIN_MODES = ("async", "sync", "off")
RETRY_SECONDS = 5.0  # first wait after a failed background retrain; doubles up to 5 minutes
PROJECT_DIR = Path(__file__).resolve().parent


class InputError(ValueError):
    """The caller asked for something invalid; the message says what, ``status`` the HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


class NotFound(LookupError):
    """The caller named a movie that does not exist."""


@dataclass(frozen=True)
class UserRatings:
    """All of one user's ratings (catalogue rows and values) and the log entry that last changed them."""

    rows: np.ndarray
    ratings: np.ndarray
    seq: int = 0


def default_model_dir(dataset: str) -> Path:
    return PROJECT_DIR / "models" / movielens.dataset_name(dataset)


def load_params(model_dir: Path) -> ModelParams:
    """The dataset's tuned parameters (written by ``evaluate.py --tune --save``), else the defaults.

    Raises ModelError with a one-line message when the file cannot be used.
    """
    path = model_dir / "params.json"
    if not path.exists():
        return ModelParams()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: {exc}") from None
    return ModelParams.from_dict(data, str(path))


class RecommendationEngine:
    """Loads a MovieLens dataset with Spark, keeps a trained model, answers queries from memory."""

    def __init__(self, sc, dataset: str, model_dir: str | Path | None = None,
                 params: ModelParams | None = None, retrain: str = "async",
                 scale: Scale | None = None):
        if retrain not in RETRAIN_MODES:
            raise ValueError(f"retrain must be one of {RETRAIN_MODES}")
        self.sc = sc
        self.dataset = dataset
        self.scale = scale  # None: inferred from the ratings
        self.retrain_mode = retrain
        self.model_dir = Path(model_dir) if model_dir else default_model_dir(dataset)
        self.params = params or load_params(self.model_dir)
        self._write_lock = threading.RLock()
        self._train_lock = threading.Lock()
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self.training = False
        self._busy = False  # the retrain thread is training or backing off
        self.last_error: str | None = None

        with phase("load dataset"):
            self._load_dataset()
        self.log = RatingsLog(self.model_dir / "ratings.log")
        self._overlay: dict[int, UserRatings] = {}
        for entry in self.log.take_recovered():
            self._apply(entry)
        self._snapshot = self._initial_snapshot()
        self._thread: threading.Thread | None = None
        if self.retrain_mode == "async":
            self._thread = threading.Thread(target=self._retrain_loop, name="retrain", daemon=True)
            self._thread.start()
        if self.log.last_seq > self._snapshot.log.seq:
            self.request_retrain()

    # --- loading -----------------------------------------------------------------------

    def _load_dataset(self) -> None:
        sc = self.sc
        self.layout = movielens.detect_layout(sc, self.dataset)
        movies = movielens.load_movies(sc, self.layout)
        ratings, bad = movielens.load_ratings(sc, self.layout)
        self.base_ratings = ratings.cache()
        users, movie_ids, values = collect_ratings(self.base_ratings)
        if bad.value:
            log.warning("skipped %d malformed line(s) in %s", bad.value, self.layout.ratings)
        if len(values) == 0:
            raise movielens.DatasetError(f"{self.layout.ratings} holds no ratings")
        self.fingerprint = movielens.fingerprint(sc, self.layout)
        self.scale = self.scale or Scale.infer(values)

        # The catalogue: every movie that is listed or rated, in id order.
        ids = np.union1d(np.fromiter(movies, dtype=np.int64, count=len(movies)), movie_ids.astype(np.int64))
        self.movie_ids = ids
        self.titles = [movies[m].title if m in movies else f"movie {m}" for m in ids.tolist()]
        self.genres = [movies[m].genres if m in movies else () for m in ids.tolist()]
        self._row = {m: i for i, m in enumerate(ids.tolist())}
        genre_names = sorted({g for gs in self.genres for g in gs})
        self.genre_masks = {g.lower(): np.array([g in gs for gs in self.genres]) for g in genre_names}
        self.genre_names = genre_names
        self._lower_titles = [t.lower() for t in self.titles]

        # Base ratings grouped by user (CSR), and per-movie counts and sums.
        rows = np.searchsorted(ids, movie_ids).astype(np.int32)
        order = np.argsort(users, kind="stable")
        users, rows, values = users[order], rows[order], values[order]
        self._base_users, starts = np.unique(users, return_index=True)
        self._base_start = np.append(starts, len(users))
        self._base_rows, self._base_values = rows, values
        self.counts = np.bincount(rows, minlength=len(ids)).astype(np.int64)
        self.sums = np.bincount(rows, weights=values, minlength=len(ids))
        self.n_base_ratings = int(len(values))
        log.info("dataset %s: %d ratings, %d users, %d movies, scale %s", self.dataset,
                 len(values), len(self._base_users), len(ids), self.scale.describe())

    def _base_user(self, user: int) -> UserRatings | None:
        i = int(np.searchsorted(self._base_users, user))
        if i >= len(self._base_users) or self._base_users[i] != user:
            return None
        lo, hi = self._base_start[i], self._base_start[i + 1]
        return UserRatings(self._base_rows[lo:hi], self._base_values[lo:hi].astype(np.float64))

    def user_ratings_of(self, user: int) -> UserRatings | None:
        """The user's current ratings: posted ones merged over the dataset's."""
        return self._overlay.get(user) or self._base_user(user)

    def _apply(self, entry: Entry) -> UserRatings:
        """Merge a log entry into the user's ratings (a new rating of a rated movie replaces it)."""
        current = self.user_ratings_of(entry.user)
        merged = dict(zip(current.rows.tolist(), current.ratings.tolist())) if current else {}
        for movie, rating in entry.ratings:
            row = self._row.get(movie)
            if row is None:  # the dataset changed under the log; keep serving the rest
                log.warning("ratings log entry %d: movie %d is not in the dataset; skipped", entry.seq, movie)
                continue
            if row in merged:
                self.sums[row] += rating - merged[row]
            else:
                self.counts[row] += 1
                self.sums[row] += rating
            merged[row] = rating
        rows = np.fromiter(merged, dtype=np.int32, count=len(merged))
        updated = UserRatings(rows, np.fromiter(merged.values(), dtype=np.float64, count=len(merged)), entry.seq)
        self._overlay[entry.user] = updated
        return updated

    # --- models ------------------------------------------------------------------------

    def _load_saved(self) -> tuple[Models, Position] | None:
        """The saved models, if trained on this data, with these parameters, on a prefix of this log."""
        try:
            models = Models.load(self.model_dir)
        except ModelError as exc:
            if (self.model_dir / "model.json").exists():
                log.warning("%s; retraining", exc)
            return None
        meta = models.meta
        position = self.log.position_at(int(meta.get("log_seq", -1)))
        if meta.get("dataset_fingerprint") != self.fingerprint:
            log.info("saved model was trained on other data; retraining")
        elif models.params != self.params or models.scale != self.scale:
            log.info("saved model has other parameters or another rating scale; retraining")
        elif position is None or meta.get("log_sha256") != position.sha256:
            log.info("saved model saw ratings the log does not hold; retraining")
        else:
            log.info("loaded saved model from %s (version %s)", self.model_dir, meta.get("model_version"))
            return models, position
        return None

    def _initial_snapshot(self) -> Snapshot:
        saved = self._load_saved()
        self.model_source = "loaded" if saved is not None else "trained"
        if saved is None:
            position = self.log.position()
            models = self._train(dict(self._overlay))
            version = 1
            self._save(models, position, version)
        else:
            models, position = saved
            version = int(models.meta.get("model_version", 1))
        return self._make_snapshot(models, version, position)

    def _train(self, overlay: dict[int, UserRatings]) -> Models:
        """Train on the dataset with the posted ratings merged in (users in the overlay replaced)."""
        if not overlay:
            return fit_models(self.sc, self.base_ratings, self.params, self.scale)
        replaced = self.sc.broadcast(set(overlay))
        try:
            ratings = self.base_ratings.filter(lambda t: t[0] not in replaced.value).union(self._posted_rdd(overlay))
            return fit_models(self.sc, ratings, self.params, self.scale)
        finally:
            replaced.destroy()

    def _posted_rdd(self, overlay: dict[int, UserRatings]):
        """The overlay users' ratings as an RDD, shipped as packed arrays (no Python object per rating)."""
        users = np.concatenate([np.full(len(ur.rows), u, dtype=np.int64) for u, ur in overlay.items()])
        movies = self.movie_ids[np.concatenate([ur.rows for ur in overlay.values()])]
        values = np.concatenate([ur.ratings for ur in overlay.values()])
        parts = max(1, self.sc.defaultParallelism)
        chunks = [(u.tobytes(), m.tobytes(), v.tobytes()) for u, m, v in
                  zip(np.array_split(users, parts), np.array_split(movies, parts), np.array_split(values, parts))]

        def unpack(chunk):
            u, m, v = (np.frombuffer(b, dtype=t) for b, t in zip(chunk, (np.int64, np.int64, np.float64)))
            return zip(u.tolist(), m.tolist(), v.tolist())

        return self.sc.parallelize(chunks, parts).flatMap(unpack)

    def _save(self, models: Models, position: Position, version: int) -> None:
        meta = {"dataset": self.dataset, "dataset_fingerprint": self.fingerprint, "model_version": version,
                "log_seq": position.seq, "log_ratings": position.ratings, "log_sha256": position.sha256,
                "metrics": {k: models.meta[k] for k in ("n_ratings", "fit_seconds")}}
        try:
            models.save(self.model_dir, meta)
        except OSError as exc:  # serving goes on; the next start retrains
            log.error("could not save the model to %s: %s", self.model_dir, exc)

    def _make_snapshot(self, models: Models, version: int, position: Position) -> Snapshot:
        """A snapshot of ``models`` with every user posted after ``position`` folded in."""
        snapshot = Snapshot.build(models, self.movie_ids, version, position)
        for user, ratings in self._overlay.items():
            if ratings.seq > position.seq:
                snapshot.folded[user] = snapshot.fold(ratings.rows, ratings.ratings)
        return snapshot

    # --- retraining ----------------------------------------------------------------------

    def request_retrain(self) -> None:
        """Ask for a full retrain; every request made while one runs is coalesced into the next."""
        if self.retrain_mode == "async":
            self._dirty.set()
        elif self.retrain_mode == "sync":
            self.retrain()

    def retrain(self) -> int:
        """Retrain on everything logged so far and swap the new model in; return its version."""
        with self._train_lock:
            with self._write_lock:
                overlay = dict(self._overlay)
                position = self.log.position()
            self.training = True
            try:
                models = self._train(overlay)
            finally:
                self.training = False
            with self._write_lock:
                snapshot = self._make_snapshot(models, self._snapshot.version + 1, position)
                self._snapshot = snapshot
            self._save(models, position, snapshot.version)
            log.info("model version %d in service (log up to entry %d)", snapshot.version, position.seq)
            return snapshot.version

    def _retrain_loop(self) -> None:
        backoff = RETRY_SECONDS
        while not self._stopping.is_set():
            self._dirty.wait()
            if self._stopping.is_set():
                return
            self._busy = True  # set before clearing _dirty, so wait_idle never sees a gap
            self._dirty.clear()
            try:
                self.retrain()
                self.last_error = None
                backoff = RETRY_SECONDS
            except Exception as exc:  # keep serving the previous model, and try again later
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.exception("background retrain failed; the previous model stays in service, "
                              "retrying in %.0f s", backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 300)
                self._dirty.set()
            finally:
                self._busy = False

    def wait_idle(self, timeout: float = 300) -> bool:
        """Wait until no retrain is pending or running (for tests, tools and shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not (self._dirty.is_set() or self._busy or self._train_lock.locked()):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        """Stop the retrain thread (waiting for a running retrain) and close the log."""
        self._stopping.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join()
        self.log.close()

    # --- queries -------------------------------------------------------------------------

    @property
    def model_version(self) -> int:
        return self._snapshot.version

    def movie_row(self, movie: int) -> int:
        row = self._row.get(movie)
        if row is None:
            raise NotFound(f"unknown movie id {movie}")
        return row

    def _genre_mask(self, genre: str | None) -> np.ndarray | None:
        if not genre:
            return None
        mask = self.genre_masks.get(genre.lower())
        if mask is None:
            raise InputError(f"unknown genre {genre!r}; known genres: {', '.join(self.genre_names)}")
        return mask

    def _movie(self, row: int, predicted: float, score: float) -> dict:
        return {"movieId": int(self.movie_ids[row]), "title": self.titles[row],
                "genres": list(self.genres[row]), "predicted_rating": round(float(predicted), 4),
                "score": float(score), "ratings_count": int(self.counts[row])}

    def recommend(self, user: int, count: int, min_count: int = 25, genre: str | None = None) -> dict:
        """Top ``count`` movies the user has not rated, among movies with at least ``min_count`` ratings.

        The ranking model orders them (``score``, unclipped); each shows the
        rating model's ``predicted_rating``, clipped to the scale.  A user the
        models know nothing about gets the most-rated movies (``score`` is the
        rating count), marked ``fallback: popular``.
        """
        snapshot = self._snapshot
        rated = self.user_ratings_of(user)
        rows = candidates(self.counts, min_count, rated.rows if rated is not None else None, self._genre_mask(genre))
        vectors = snapshot.user_vectors(user)
        rows, scores = snapshot.top_n(vectors, rows, count, self.counts)
        predicted = snapshot.predicted_ratings(vectors, rows)
        movies = [self._movie(r, p, s) for r, p, s in zip(rows.tolist(), predicted.tolist(), scores.tolist())]
        result = {"user": user, "movies": movies, "model_version": snapshot.version}
        if vectors is None:
            result["fallback"] = "popular"
        return result

    def predict(self, user: int, movie: int) -> dict:
        """The predicted rating of one movie for one user, and the user's own rating if any."""
        row = self.movie_row(movie)
        snapshot = self._snapshot
        score = float(snapshot.predicted_ratings(snapshot.user_vectors(user), slice(row, row + 1))[0])
        rated = self.user_ratings_of(user)
        own = None
        if rated is not None:
            hit = np.flatnonzero(rated.rows == row)
            own = float(rated.ratings[hit[0]]) if hit.size else None
        return {"user": user, "movieId": movie, "title": self.titles[row],
                "genres": list(self.genres[row]),
                "predicted_rating": round(score, 4),
                "ratings_count": int(self.counts[row]), "user_rating": own,
                "model_version": snapshot.version}

    def rated(self, user: int) -> list[dict]:
        """The user's rated movies, most recent dataset order aside, by movie id."""
        ratings = self.user_ratings_of(user)
        if ratings is None:
            return []
        order = np.argsort(ratings.rows, kind="stable")
        return [{"movieId": int(self.movie_ids[r]), "title": self.titles[r], "rating": float(v)}
                for r, v in zip(ratings.rows[order].tolist(), ratings.ratings[order].tolist())]

    def search(self, query: str, limit: int = 20) -> list[dict]:
        """Movies whose title contains ``query`` (case-insensitive), most rated first."""
        needle = query.strip().lower()
        if not needle:
            raise InputError("q must not be empty")
        hits = [i for i, t in enumerate(self._lower_titles) if needle in t]
        hits.sort(key=lambda i: (-self.counts[i], self.movie_ids[i]))
        return [{"movieId": int(self.movie_ids[i]), "title": self.titles[i],
                 "genres": list(self.genres[i]), "ratings_count": int(self.counts[i])}
                for i in hits[:limit]]

    def movie(self, movie: int) -> dict:
        """A catalogue entry with its rating count and mean."""
        row = self.movie_row(movie)
        count = int(self.counts[row])
        return {"movieId": movie, "title": self.titles[row], "genres": list(self.genres[row]),
                "ratings_count": count,
                "average_rating": round(float(self.sums[row] / count), 4) if count else None}

    def similar(self, movie: int, count: int = 10, min_count: int = 25) -> list[dict]:
        """Movies closest in cosine to the given one in the ranking model, among those with ``min_count`` ratings."""
        row = self.movie_row(movie)
        rows, sims = self._snapshot.similar(row, candidates(self.counts, min_count), count)
        return [{"movieId": int(self.movie_ids[r]), "title": self.titles[r],
                 "genres": list(self.genres[r]), "similarity": round(float(s), 4),
                 "ratings_count": int(self.counts[r])} for r, s in zip(rows.tolist(), sims.tolist())]

    # --- writes --------------------------------------------------------------------------

    def check_ratings(self, pairs: list[tuple[int, float]], labels: list[str] | None = None) -> None:
        """Reject a batch that names an unknown movie, an off-scale rating, or one movie twice.

        ``labels`` name each pair in messages (such as "line 3"); by default "rating N".
        """
        if not pairs:
            raise InputError("no ratings given")
        labels = labels or [f"rating {i}" for i in range(1, len(pairs) + 1)]
        seen: set[int] = set()
        for label, (movie, rating) in zip(labels, pairs):
            if movie not in self._row:
                raise InputError(f"{label}: unknown movie id {movie}")
            if not self.scale.allows(rating):
                raise InputError(f"{label}: {rating:g} is not on the scale {self.scale.describe()}")
            if movie in seen:
                raise InputError(f"{label}: movie {movie} is rated twice in one request")
            seen.add(movie)

    def add_ratings(self, user: int, pairs: list[tuple[int, float]], labels: list[str] | None = None) -> dict:
        """Durably store a user's ratings, fold them in at once, and schedule a retrain.

        Returns only after the ratings are fsync'd to the log; all or nothing.
        """
        if not 0 <= user <= MAX_ID:
            raise InputError(f"user id {user} is outside 0..{MAX_ID}")
        self.check_ratings(pairs, labels)
        with self._write_lock:
            entry = self.log.append(user, pairs)
            ratings = self._apply(entry)
            self._snapshot.folded[user] = self._snapshot.fold(ratings.rows, ratings.ratings)
            version = self._snapshot.version
        if self.retrain_mode == "sync":
            version = self.retrain()
        elif self.retrain_mode == "async":
            self._dirty.set()
        return {"user": user, "accepted": len(pairs), "model_version": version}

    def health(self) -> dict:
        snapshot = self._snapshot
        pending = self.log.position().ratings - snapshot.log.ratings
        return {"status": "ok", "model_version": snapshot.version, "trained_at": snapshot.trained_at,
                "n_ratings": int(self.counts.sum()), "pending_ratings": pending,
                "training": self.training, "retrain": self.retrain_mode,
                "last_retrain_error": self.last_error}
