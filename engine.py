"""RecommendationEngine: MovieLens data in Spark, two ALS models and item neighbourhoods, answers from memory.

Spark loads the dataset and trains the rating and the ranking model and the
item neighbourhoods (training.py), after tuning the parameters on the first
training of a dataset that has none saved (tuning.py); the models are kept as
NumPy arrays in the driver (serving.Snapshot), so every query is answered in
milliseconds without a Spark job.  Posted ratings are committed to a SQLite store (ratings_store.py), folded
into the user's vectors at once, and trigger a full retrain in the background
that swaps the snapshot atomically when done.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import tuning
from datasets import movielens
from model import ModelError, ModelParams, Models, Scale, write_json_durably
from ratings_store import RatingsStore, StoreError
from serving import Snapshot, candidates
from training import Cancelled, collect_ratings, fit_models, phase

log = logging.getLogger(__name__)

MAX_ID = 2**31 - 1  # pyspark.mllib keeps ids as 32-bit ints
RETRAIN_MODES = ("async", "sync", "off")
RETRY_SECONDS = 5.0  # first wait after a failed background retrain; doubles up to 5 minutes
SYNC_WAIT_SECONDS = 900.0  # how long a POST in sync mode waits for the model that includes it
RETRAIN_JOB_GROUP = "recommender-retrain"
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
    """All of one user's ratings: catalogue rows and values."""

    rows: np.ndarray
    ratings: np.ndarray


def _pairs(ratings: UserRatings | None) -> tuple[np.ndarray, np.ndarray] | None:
    return None if ratings is None else (ratings.rows, ratings.ratings)


def default_model_dir(dataset: str) -> Path:
    return PROJECT_DIR / "models" / movielens.dataset_name(dataset)


def saved_params(model_dir: Path) -> ModelParams | None:
    """The dataset's tuned parameters (written by the first training's tuning or ``evaluate.py --tune
    --save``), or None when it has none.

    Raises ModelError with a one-line message when the file cannot be used.
    """
    path = model_dir / "params.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: {exc}") from None
    return ModelParams.from_dict(data, str(path))


def load_params(model_dir: Path) -> ModelParams:
    """The dataset's saved parameters, else the defaults."""
    return saved_params(model_dir) or ModelParams()


def save_params(model_dir: Path, params: ModelParams | None, report: dict | None = None) -> Path:
    """Write ``params.json`` (unless ``params`` is None) for good (temporary file, fsync, rename), and the
    tuning ``report`` beside it as ``tune.json``; return the params file's path."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "params.json"
    if report is not None:
        write_json_durably(model_dir / "tune.json", report)
    if params is not None:
        write_json_durably(path, params.as_dict())
    return path


class RecommendationEngine:
    """Loads a MovieLens dataset with Spark, keeps a trained model, answers queries from memory."""

    def __init__(self, sc, dataset: str, model_dir: str | Path | None = None,
                 params: ModelParams | None = None, retrain: str = "async",
                 scale: Scale | None = None, tune_budget: float | None = None):
        """``params`` None: the dataset's saved parameters; when it has none and ``tune_budget`` (seconds)
        is given, they are tuned on the first training's ratings and saved, else the defaults."""
        if retrain not in RETRAIN_MODES:
            raise ValueError(f"retrain must be one of {RETRAIN_MODES}")
        self.sc = sc
        self.dataset = dataset
        self.scale = scale  # None: inferred from the ratings
        self.retrain_mode = retrain
        self.model_dir = Path(model_dir) if model_dir else default_model_dir(dataset)
        saved = None if params is not None else saved_params(self.model_dir)
        self.params = params or saved or ModelParams()
        self._tune_budget = tune_budget if params is None and saved is None else None
        self._write_lock = threading.RLock()
        self._train_lock = threading.Lock()
        self._dirty = threading.Event()
        self._swapped = threading.Condition()  # notified when a retrain ends, well or not
        self._stopping = threading.Event()
        self.training = False
        self._busy = False  # the retrain thread is training or backing off
        self.last_error: str | None = None
        self._training_seq = self._failed_seq = 0  # the request the running / last failed retrain went up to
        # This engine's retrain jobs; closing cancels the group for good, so it is never shared.
        self._job_group = f"{RETRAIN_JOB_GROUP}-{uuid.uuid4().hex[:12]}"

        with phase("load dataset"):
            self._load_dataset()
        self.store = RatingsStore(self.model_dir / "ratings.db")
        for user, posted, _ in self.store.latest(self.store.last_seq):
            self._count(self._base_user(user), self._merge(user, posted))
        self._snapshot = self._initial_snapshot()
        self._thread: threading.Thread | None = None
        if self.retrain_mode != "off":
            self._thread = threading.Thread(target=self._retrain_loop, name="retrain", daemon=True)
            self._thread.start()
        if self.store.last_seq > self._snapshot.seq:
            self.request_retrain()

    # --- loading -----------------------------------------------------------------------

    def _load_dataset(self) -> None:
        sc = self.sc
        self.layout = movielens.detect_layout(sc, self.dataset)
        movies = movielens.load_movies(sc, self.layout)
        ratings, bad = movielens.load_ratings(sc, self.layout)
        self.malformed = bad  # counts malformed lines each time the source is read
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
        """The user's current ratings: posted ones (read from the store) merged over the dataset's."""
        posted = self.store.user_ratings(user)
        return self._merge(user, posted) if posted else self._base_user(user)

    def _merge(self, user: int, posted: list[tuple[int, float]]) -> UserRatings:
        """The user's dataset ratings with the posted ones over them (a new rating of a movie replaces it)."""
        base = self._base_user(user)
        merged = dict(zip(base.rows.tolist(), base.ratings.tolist())) if base else {}
        for movie, rating in posted:
            row = self._row.get(movie)
            if row is None:  # the dataset changed under the store; keep serving the rest
                log.warning("posted rating of user %d: movie %d is not in the dataset; skipped", user, movie)
                continue
            merged[row] = rating
        rows = np.fromiter(merged, dtype=np.int32, count=len(merged))
        return UserRatings(rows, np.fromiter(merged.values(), dtype=np.float64, count=len(merged)))

    def _count(self, before: UserRatings | None, after: UserRatings) -> None:
        """Move the per-movie counts and sums from a user's old ratings to the new ones."""
        if before is not None:
            np.subtract.at(self.counts, before.rows, 1)
            np.subtract.at(self.sums, before.rows, before.ratings)
        np.add.at(self.counts, after.rows, 1)
        np.add.at(self.sums, after.rows, after.ratings)

    # --- models ------------------------------------------------------------------------

    def _load_saved(self) -> tuple[Models, int] | None:
        """The saved models and the request they were trained up to, if they match this data and store."""
        try:
            models = Models.load(self.model_dir)
        except ModelError as exc:
            if (self.model_dir / "model.json").exists():
                log.warning("%s; retraining", exc)
            return None
        meta = models.meta
        if meta.get("dataset_fingerprint") != self.fingerprint:
            log.info("saved model was trained on other data; retraining")
        elif models.params != self.params or models.scale != self.scale:
            log.info("saved model has other parameters or another rating scale; retraining")
        elif meta.get("store_id") != self.store.store_id or meta.get("store_seq") != self.store.trained_seq:
            log.info("saved model was not trained on this ratings store's ratings; retraining")
        else:
            log.info("loaded saved model from %s (version %s)", self.model_dir, meta.get("model_version"))
            return models, meta["store_seq"]
        return None

    def _tune(self) -> None:
        """Tune the parameters on the current ratings (a validation split of them), save and use them."""
        with self._ratings_up_to(self.store.last_seq) as ratings:
            params, report = tuning.tune(self.sc, ratings, self.params, self.scale, self._tune_budget)
        try:
            save_params(self.model_dir, params, report)
        except OSError as exc:  # serving goes on with the pick; the next start tunes again
            log.error("could not save the tuned parameters to %s: %s", self.model_dir, exc)
        self.params = params

    def _initial_snapshot(self) -> Snapshot:
        if self._tune_budget is not None:
            self._tune()
        saved = self._load_saved()
        self.model_source = "loaded" if saved is not None else "trained"
        if saved is None:
            seq = self.store.last_seq
            models = self._train(seq)
            version = 1
            self._save(models, seq, version)
        else:
            models, seq = saved
            version = int(models.meta.get("model_version", 1))
        return self._make_snapshot(models, version, seq)

    def _train(self, seq: int) -> Models:
        """Train on the dataset with every rating posted up to request ``seq`` merged in."""
        with self._ratings_up_to(seq) as ratings:
            return fit_models(self.sc, ratings, self.params, self.scale, stop=self._stopping.is_set)

    @contextmanager
    def _ratings_up_to(self, seq: int):
        """The dataset's ratings with every rating posted up to request ``seq`` merged in, as an RDD."""
        overlay = {user: self._merge(user, posted) for user, posted, _ in self.store.latest(seq)}
        if not overlay:
            yield self.base_ratings
            return
        replaced = self.sc.broadcast(set(overlay))
        try:
            yield self.base_ratings.filter(lambda t: t[0] not in replaced.value).union(self._posted_rdd(overlay))
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

    def _save(self, models: Models, seq: int, version: int) -> None:
        """Save the models, then record in the store that they cover requests up to ``seq``."""
        meta = {"dataset": self.dataset, "dataset_fingerprint": self.fingerprint, "model_version": version,
                "store_id": self.store.store_id, "store_seq": seq,
                "metrics": {k: models.meta[k] for k in ("n_ratings", "fit_seconds")}}
        try:
            models.save(self.model_dir, meta)
            self.store.mark_trained(seq)
        except (OSError, StoreError) as exc:  # serving goes on; the next start retrains
            log.error("could not save the model to %s: %s", self.model_dir, exc)
            return
        self.store.compact(seq)

    def _make_snapshot(self, models: Models, version: int, seq: int) -> Snapshot:
        """A snapshot of ``models`` with every user who posted after request ``seq`` folded in."""
        snapshot = Snapshot.build(models, self.movie_ids, version, seq)
        for user in self.store.users_after(seq):
            ratings = self.user_ratings_of(user)
            snapshot.folded[user] = snapshot.fold(ratings.rows, ratings.ratings)
        return snapshot

    # --- retraining ----------------------------------------------------------------------

    def request_retrain(self) -> None:
        """Ask the retrain thread for a full retrain; requests made while one runs coalesce into the next."""
        if self._thread is not None:
            self._dirty.set()

    def retrain(self) -> int:
        """Retrain on every stored rating and swap the new model in; return its version.

        Raises Cancelled (and swaps nothing) when the engine is closing.
        """
        with self._train_lock:
            seq = self._training_seq = self.store.last_seq
            self.training = True
            try:
                models = self._train(seq)
            finally:
                self.training = False
            if self._stopping.is_set():
                raise Cancelled("the engine is closing")
            with self._write_lock:
                snapshot = self._make_snapshot(models, self._snapshot.version + 1, seq)
                self._snapshot = snapshot
            self._save(models, seq, snapshot.version)
            log.info("model version %d in service (ratings up to request %d)", snapshot.version, seq)
            return snapshot.version

    def _retrain_loop(self) -> None:
        # Jobs of this thread form one group, so close() can cancel them and nothing else.
        self.sc.setJobGroup(self._job_group, "background retrain", interruptOnCancel=True)
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
                if self._stopping.is_set():
                    log.info("retrain stopped: the service is shutting down")
                    return
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self._failed_seq = self._training_seq
                log.exception("background retrain failed; the previous model stays in service, "
                              "retrying in %.0f s", backoff)
                with self._swapped:
                    self._swapped.notify_all()
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 300)
                self._dirty.set()
            finally:
                self._busy = False
                with self._swapped:
                    self._swapped.notify_all()

    def _wait_for_model(self, seq: int, timeout: float) -> str | None:
        """Block until a model trained on request ``seq`` serves; None, or why it does not (sync mode)."""
        deadline = time.monotonic() + timeout
        with self._swapped:
            while self._snapshot.seq < seq:
                if self._stopping.is_set():
                    return "the service is stopping"
                if self.last_error and self._failed_seq >= seq:  # the retrain that included it failed
                    return self.last_error
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"no retrain finished within {timeout:.0f} s"
                self._swapped.wait(left)
        return None

    def wait_idle(self, timeout: float = 300) -> bool:
        """Wait until no retrain is pending or running (for tests, tools and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._swapped:
            while self._dirty.is_set() or self._busy or self._train_lock.locked():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._swapped.wait(min(left, 0.5))
        return True

    def close(self, timeout: float = 60) -> None:
        """Stop retraining (a running retrain's Spark jobs are cancelled) and close the store.

        The stop flag is set first, so a cancelled retrain starts no further job and swaps nothing.
        """
        self._stopping.set()
        self._dirty.set()
        if self.training:
            log.info("cancelling the running retrain")
            self._cancel_retrain_jobs()
        with self._swapped:
            self._swapped.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the retrain thread did not stop within %.0f s; leaving it", timeout)
                return
        self.store.close()

    def _cancel_retrain_jobs(self) -> None:
        """Cancel the retrain's running Spark job and every job it would start after it.

        Plain ``cancelJobGroup`` cancels only the jobs running at that instant:
        ALS runs dozens of short jobs, and one asked between two of them went on
        training for many seconds after shutdown began.  The group is this
        engine's own: another engine on the same context keeps retraining.
        """
        try:
            self.sc._jsc.sc().cancelJobGroupAndFutureJobs(self._job_group)
        except Exception:  # the JVM may have had the signal too (process-group kill)
            log.info("Spark had already stopped")

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

        The ranking model orders them (``score``, unclipped); each shows its
        ``predicted_rating`` (ALS blended with the neighbourhood of the user's
        ratings), clipped to the scale.  A user the
        models know nothing about gets the most-rated movies (``score`` is the
        rating count), marked ``fallback: popular``.
        """
        snapshot = self._snapshot
        rated = self.user_ratings_of(user)
        rows = candidates(self.counts, min_count, rated.rows if rated is not None else None, self._genre_mask(genre))
        vectors = snapshot.user_vectors(user)
        rows, scores = snapshot.top_n(vectors, rows, count, self.counts)
        predicted = snapshot.predicted_ratings(vectors, rows, rated=_pairs(rated))
        movies = [self._movie(r, p, s) for r, p, s in zip(rows.tolist(), predicted.tolist(), scores.tolist())]
        result = {"user": user, "movies": movies, "model_version": snapshot.version}
        if vectors is None:
            result["fallback"] = "popular"
        return result

    def predict(self, user: int, movie: int) -> dict:
        """The predicted rating of one movie for one user, and the user's own rating if any."""
        row = self.movie_row(movie)
        snapshot = self._snapshot
        rated = self.user_ratings_of(user)
        score = float(snapshot.predicted_ratings(snapshot.user_vectors(user), np.array([row]), rated=_pairs(rated))[0])
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
        off_scale = [(label, rating) for label, (_, rating) in zip(labels, pairs, strict=True)
                     if not self.scale.allows(rating)]
        for label, (movie, _) in zip(labels, pairs, strict=True):
            if movie not in self._row:
                raise InputError(f"{label}: unknown movie id {movie}")
            if movie in seen:
                raise InputError(f"{label}: movie {movie} is rated twice in one request")
            seen.add(movie)
        if off_scale:
            raise InputError(self._scale_message(off_scale, [r for _, r in pairs]))

    def _scale_message(self, off_scale: list[tuple[str, float]], ratings: list[float]) -> str:
        """Say which ratings are off the scale, how many, and whether the batch looks like a 1-10 scale."""
        label, rating = off_scale[0]
        message = f"{label}: {rating:g} is not on the scale {self.scale.describe()}"
        if len(off_scale) > 1:
            message += f" ({len(off_scale)} of {len(ratings)} ratings are off the scale)"
        if self.scale.high < 10 and all(1 <= r <= 10 and r == int(r) for r in ratings):
            message += (f"; this looks like a 1-10 scale (the Spark tutorial's user_ratings file uses one): "
                        f"this dataset uses {self.scale.low:g}-{self.scale.high:g}")
            if all(self.scale.allows(r / 2) for r in ratings):
                message += ", so halve the ratings"
        return message

    def add_ratings(self, user: int, pairs: list[tuple[int, float]], labels: list[str] | None = None) -> dict:
        """Durably store a user's ratings, fold them in at once, and schedule a retrain.

        Returns only after the store committed them; all or nothing.  In ``sync``
        mode it then waits for the model that includes them; a failed retrain
        does not undo the stored ratings (``retrain_error`` says why).
        """
        if not 0 <= user <= MAX_ID:
            raise InputError(f"user id {user} is outside 0..{MAX_ID}")
        self.check_ratings(pairs, labels)
        with self._write_lock:
            before = self.user_ratings_of(user)
            try:
                entry = self.store.append(user, pairs)
            except StoreError as exc:
                log.error("%s", exc)
                raise InputError("the ratings could not be stored; nothing was saved, try again later", 503) from None
            after = self.user_ratings_of(user)
            self._count(before, after)
            self._snapshot.folded[user] = self._snapshot.fold(after.rows, after.ratings)
            version = self._snapshot.version
        result = {"user": user, "accepted": len(pairs), "model_version": version}
        self.request_retrain()
        if self.retrain_mode == "sync":
            problem = self._wait_for_model(entry.seq, SYNC_WAIT_SECONDS)
            result["model_version"] = self._snapshot.version
            if problem:
                result["retrain_error"] = problem
        return result

    def health(self) -> dict:
        snapshot = self._snapshot
        return {"status": "ok", "model_version": snapshot.version, "trained_at": snapshot.trained_at,
                "n_ratings": int(self.counts.sum()), "pending_ratings": self.store.ratings_after(snapshot.seq),
                "training": self.training, "retrain": self.retrain_mode,
                "last_retrain_error": self.last_error}
