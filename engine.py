"""RecommendationEngine: MovieLens in Spark, trained with pyspark.mllib ALS and published as model versions.

The trainer process holds one engine.  It parses the dataset's files into RDDs
once (cached), merges in every rating posted to the store, fits the rating and
ranking models and the item neighbourhood (spark/training.py), tunes a
dataset without saved parameters (spark/tuning.py), and publishes each fit
as an immutable version (storage/versions.py) together with the catalogue and
every user's ratings, which API processes load with NumPy alone.  When to fit
is the trainer loop's business (trainer/loop.py).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from datasets import movielens
from model import ModelError, ModelParams, Scale, TuneBudget
from serving.snapshot import Snapshot
from settings import default_model_dir
from spark import internals, tuning
from spark.training import Cancelled, collect_ratings, fit_models, phase
from storage.backends import open_store
from storage.catalogue import Catalogue, Histories
from storage.params import save_params, saved_params, tuning_summary
from storage.people import People
from storage.shipping import shared_versions
from storage.steering import Steering
from storage.store import Store, StoreError
from storage.versions import ModelVersions

log = logging.getLogger(__name__)

JOB_GROUP = "recommender-training"
DATASET_KEY = "dataset"  # the store's record of the dataset it belongs to
MAX_REREADS = 5  # reads of the posted ratings a fit tries while users are being forgotten


class RecommendationEngine:
    """Loads a MovieLens dataset into Spark, fits the models on it plus the posted ratings, publishes them."""

    def __init__(self, sc, dataset: str, model_dir: str | Path | None = None, store: Store | None = None,
                 params: ModelParams | None = None, scale: Scale | None = None, tune_budget: TuneBudget | None = None,
                 keep_versions: int = 3):
        """``params`` None: the dataset's saved parameters; when it has none and ``tune_budget`` is given,
        :meth:`tune` may pick them, else the defaults."""
        self.sc = sc
        self.dataset = dataset
        self.scale = scale  # None: inferred from the ratings
        self.model_dir = Path(model_dir) if model_dir else default_model_dir(dataset)
        self.store = store or open_store(None, self.model_dir)
        # Pruning keeps what the serving plan names (a pinned version, an experiment's arms).
        self.versions = ModelVersions(self.model_dir, keep_versions, protect=Steering(self.store).protected)
        self.shared = shared_versions(self.store)  # PostgreSQL: versions go to the database for other hosts
        self._newest_shared = 0  # the highest version number the store held when it last answered
        saved = None if params is not None else saved_params(self.model_dir)
        self.params = params or saved or ModelParams()
        self.params_source = "given" if params is not None else "saved" if saved is not None else "default"
        self.tune_budget = tune_budget if params is None and saved is None else None
        self._stopping = threading.Event()
        self._unrecorded: tuple[int, int] | None = None  # (version, seq) published while the store was down
        # This engine's Spark jobs; cancelling the group is for good, so it is never shared.
        self.job_group = f"{JOB_GROUP}-{uuid.uuid4().hex[:12]}"
        with phase("load dataset"):
            self._load_dataset()

    def _load_dataset(self) -> None:
        sc = self.sc
        self.layout = movielens.detect_layout(sc, self.dataset)
        movies = movielens.load_movies(sc, self.layout)
        ratings, bad = movielens.load_ratings(sc, self.layout)
        self.malformed = bad  # counts malformed lines each time the source is read
        self.base_ratings = ratings.cache()
        users, movie_ids, values = collect_ratings(self.base_ratings)
        if bad.value:
            line, text = movielens.first_malformed(sc, self.layout) or (0, "")
            log.warning("skipped %d malformed line(s) in %s; the first is %s:%d: %r", bad.value,
                        self.layout.ratings, self.layout.ratings, line, text[:80])
        if len(values) == 0:
            raise movielens.DatasetError(f"{self.layout.ratings} holds no ratings")
        self.fingerprint = movielens.fingerprint(sc, self.layout)
        self._claim_store()
        self.scale = self.scale or Scale.infer(values)
        # The catalogue: every movie that is listed or rated, in id order.
        ids = np.union1d(np.fromiter(movies, dtype=np.int64, count=len(movies)), movie_ids.astype(np.int64))
        self.catalogue = Catalogue(ids, [movies[m].title if m in movies else f"movie {m}" for m in ids.tolist()],
                                   [movies[m].genres if m in movies else () for m in ids.tolist()])
        self._base = (users.astype(np.int64), np.searchsorted(ids, movie_ids).astype(np.int32), values)
        log.info("dataset %s: %d ratings, %d users, %d movies, scale %s", self.dataset, len(values),
                 len(np.unique(users)), len(ids), self.scale.describe())

    def _claim_store(self) -> None:
        """Record which dataset the model folder's ratings and versions belong to, and refuse another one.

        Default folders are named after the dataset's folder, so two different
        datasets both called ml-latest-small would otherwise share one store.  A
        copy of the same files elsewhere (same content) and the same path with
        new content are both the same dataset.
        """
        identity = movielens.identity(self.dataset)
        owner = json.loads(self.store.get_meta(DATASET_KEY) or "null")
        if owner and owner["path"] != identity and owner["fingerprint"] != self.fingerprint:
            raise movielens.DatasetError(
                f"{self.model_dir} holds the ratings and models of {owner['path']}, not of {identity}: "
                "give this dataset a --model-dir of its own")
        if owner != {"path": identity, "fingerprint": self.fingerprint}:
            self.store.put_meta(DATASET_KEY, json.dumps({"path": identity, "fingerprint": self.fingerprint}))

    # --- the ratings a fit sees ---------------------------------------------------------------

    def histories(self, seq: int) -> tuple[Histories, list[int]]:
        """Every user's ratings: the dataset's, less those of forgotten users and withdrawn ratings (as the
        store has them now: storage/people.py), with every rating posted up to request ``seq`` over them;
        and the users whose ratings differ from the dataset's (posted, forgotten or withdrawn)."""
        users, rows, values = self._base
        (forgotten, withdrawn), latest = self._excluded_and_posted(seq)
        if forgotten or withdrawn:
            drop = np.isin(users, np.fromiter(forgotten, dtype=np.int64, count=len(forgotten)))
            pairs = [(u, self.catalogue.row(m)) for u, m in withdrawn if self.catalogue.has(m)]
            if pairs:
                n = len(self.catalogue)
                wanted = np.array([u * n + r for u, r in pairs], dtype=np.int64)
                drop |= np.isin(users * n + rows, wanted)
            users, rows, values = users[~drop], rows[~drop], values[~drop]
        changed = forgotten | {u for u, _ in withdrawn}
        posted = [(u, self.catalogue.row(m), r) for u, pairs, _ in latest for m, r in pairs if self._known(u, m)]
        if posted:
            extra = np.array(posted, dtype=np.float64).reshape(-1, 3)
            users = np.concatenate([users, extra[:, 0].astype(np.int64)])
            rows = np.concatenate([rows, extra[:, 1].astype(np.int32)])
            values = np.concatenate([values, extra[:, 2].astype(np.float32)])
        return Histories.build(users, rows, values, len(self.catalogue)), sorted({u for u, _, _ in latest} | changed)

    def _excluded_and_posted(self, seq: int) -> tuple[tuple[set[int], set[tuple[int, int]]], list]:
        """The forgotten users and withdrawn ratings, and the posted ratings up to ``seq``, with no forget or
        withdrawal between the two reads: the newest one's request number is read again after the posted
        ratings, and both once more when it moved (a forget in between, a repeated one too, would leave the
        user's dataset ratings in the fit, or their posted ones, which it deletes)."""
        people = People(self.store)
        mark, excluded = people.last_exclusion(), people.excluded()
        for _ in range(MAX_REREADS):
            latest = list(self.store.latest(seq))
            again = people.last_exclusion()  # moves with every forget or withdrawal, a repeated one too
            if again == mark:
                return excluded, latest
            mark, excluded = again, people.excluded()
        raise StoreError(f"users were forgotten or ratings withdrawn during each of {MAX_REREADS} reads of the "
                         "posted ratings; the fit is tried again later")

    def _known(self, user: int, movie: int) -> bool:
        if self.catalogue.has(movie):
            return True
        log.warning("posted rating of user %d: movie %d is not in the dataset; skipped", user, movie)
        return False

    @contextmanager
    def _ratings(self, histories: Histories, posted_users: list[int]):
        """The dataset's ratings RDD with ``posted_users`` replaced by their merged ratings in ``histories``
        (none for a user forgotten who posted nothing since)."""
        if not posted_users:
            yield self.base_ratings
            return
        replaced = self.sc.broadcast(set(posted_users))
        try:
            yield self.base_ratings.filter(lambda t: t[0] not in replaced.value).union(
                self._posted_rdd(histories, posted_users))
        finally:
            replaced.destroy()

    def _posted_rdd(self, histories: Histories, users: list[int]):
        """Those users' ratings as an RDD, shipped as packed arrays (no Python object per rating)."""
        users = [u for u in users if histories.of(u) is not None]
        mine = [histories.of(u) for u in users]
        if not users:
            return self.sc.emptyRDD()
        user_col = np.concatenate([np.full(len(r.rows), u, dtype=np.int64) for u, r in zip(users, mine)])
        movies = self.catalogue.movie_ids[np.concatenate([r.rows for r in mine])]
        values = np.concatenate([r.ratings for r in mine])
        parts = max(1, self.sc.defaultParallelism)
        chunks = [(u.tobytes(), m.tobytes(), v.tobytes()) for u, m, v in
                  zip(np.array_split(user_col, parts), np.array_split(movies, parts), np.array_split(values, parts))]

        def unpack(chunk):
            u, m, v = (np.frombuffer(b, dtype=t) for b, t in zip(chunk, (np.int64, np.int64, np.float64)))
            return zip(u.tolist(), m.tolist(), v.tolist())

        return self.sc.parallelize(chunks, parts).flatMap(unpack)

    # --- fitting and publishing ----------------------------------------------------------------

    def current_meta(self) -> dict | None:
        """The version in service's version.json, or None when none is published (or it is unreadable)."""
        number = self.versions.current()
        if number is None:
            return None
        try:
            return json.loads((self.versions.path(number) / "version.json").read_text())
        except (OSError, ValueError) as exc:
            log.warning("model version %d is unreadable (%s); a new one will be fitted", number, exc)
            return None

    def matches(self, meta: dict | None) -> bool:
        """Whether a published version was fitted on this dataset with these parameters and scale, and on
        this ratings store as it is (not another store, nor before the store was restored from a backup)."""
        if meta is None:
            return False
        try:
            same_params = ModelParams.from_dict(meta.get("params", {})) == self.params
        except ModelError:
            same_params = False
        return (meta.get("dataset_fingerprint") == self.fingerprint and same_params
                and meta.get("scale") == self.scale.__dict__ and self.store.covered(meta) is not None)

    def share_versions(self) -> None:
        """Make the store and this host's folder agree (before fitting, and at every trainer poll): record a
        version published while the store was down, and with a database store copy the store's current
        version here when it is newer, or upload this folder's when the store lacks it.  A version fitted
        on another store is never uploaded (the trainer fits one on this store instead)."""
        if self._unrecorded is not None:
            number, seq = self._unrecorded
            if self.store.last_seq >= seq:  # else the store went back meanwhile: the version is not its own
                self.store.record_version(number, seq)
            self._unrecorded = None
        if self.shared is None:
            return
        local = self.versions.current() or 0
        if (self.shared.current() or 0) > local:
            self.shared.sync(self.versions)
        elif local > self._newest() and self.store.covered(self.current_meta() or {}) is not None:
            self.shared.upload(self.versions, local, self.versions.keep)
            self._newest_shared = max(self._newest_shared, local)
        newest = self._newest()  # one query a poll, not one a version
        for number in self.versions.numbers():  # candidates published while the store was down
            meta = self.versions.describe(number) or {}
            if number > newest and meta.get("candidate") and self.store.covered(meta) is not None:
                self.shared.upload(self.versions, number, self.versions.keep, serve=False)
                self._newest_shared = max(self._newest_shared, number)

    def _record(self, number: int, seq: int) -> None:
        """Record version ``number`` in the ratings store before CURRENT names it: API processes trust its
        request number on this store from the start.  A store that is down does not stop the publish: they
        fold in every stored rating meanwhile, and :meth:`share_versions` records it once the store answers."""
        try:
            self.store.record_version(number, seq)
        except StoreError as exc:
            log.warning("model version %d is not recorded in the ratings store yet (%s); it is once the store "
                        "answers", number, exc)
            self._unrecorded = (number, seq)

    def _newest(self) -> int:
        """The highest version number the store holds (remembered: see :meth:`_number_floor`)."""
        self._newest_shared = max(self._newest_shared, self.shared.newest())
        return self._newest_shared

    def _number_floor(self) -> int:
        """What a new version's number must exceed besides this folder's: the store's newest, or when the
        store is down the newest it last named, so that the fit is published here all the same (and
        uploaded by :meth:`share_versions` once the store answers) instead of being thrown away."""
        if self.shared is None:
            return 0
        try:
            return self._newest()
        except StoreError as exc:
            log.warning("%s; the fit is published here and goes to the store once it answers", exc)
            return self._newest_shared

    def fit_and_publish(self, seq: int | None = None, params: ModelParams | None = None, serve: bool = True) -> int:
        """Fit every model on the dataset and every rating posted up to request ``seq`` (default: all),
        with ``params`` (default: the dataset's), publish the fit as a new version, and return its number.
        ``serve`` False publishes a candidate: kept and shipped, but CURRENT does not name it (it serves
        only when pinned or in an experiment).

        Raises Cancelled (and publishes nothing) when :meth:`cancel` was called.
        """
        self.sc.setJobGroup(self.job_group, "fit the models", interruptOnCancel=True)
        seq = self.store.last_seq if seq is None else seq
        histories, posted_users = self.histories(seq)
        with self._ratings(histories, posted_users) as ratings:
            models = fit_models(self.sc, ratings, params or self.params, self.scale, stop=self._stopping.is_set)
        if self._stopping.is_set():
            raise Cancelled("the trainer is stopping")
        meta = {"dataset": self.dataset, "dataset_fingerprint": self.fingerprint, "store_id": self.store.store_id,
                "seq": seq, "tuned": self.tune_budget is None, "validation": tuning_summary(self.model_dir),
                "n_ratings": models.meta["n_ratings"],
                "fit_seconds": models.meta["fit_seconds"], "candidate": not serve,
                "params_source": "candidate" if params is not None and not serve else self.params_source}
        if serve:
            self._unrecorded = None  # an earlier version still unrecorded is superseded by this one
        number = self.versions.publish(models, self.catalogue, histories, meta, after=self._number_floor(),
                                       announce=lambda n: self._record(n, seq), serve=serve,
                                       layout=Snapshot.layouts(models, self.catalogue.movie_ids))
        log.info("model version %d published%s (ratings up to request %d, fit in %.1f s)", number,
                 "" if serve else " as a candidate (not served unless pinned or in an experiment)", seq,
                 models.meta["fit_seconds"]["total"])
        if self._unrecorded is not None:  # the store is away: uploaded too once it answers
            return number
        if self.shared:  # API processes on other hosts get it from there
            try:
                self.shared.upload(self.versions, number, self.versions.keep, serve=serve)
            except StoreError as exc:  # the fit is not lost: share_versions uploads it once the store answers
                log.warning("model version %d is not in the store yet (%s); it goes there once the store "
                            "answers", number, exc)
                return number
            self._newest_shared = max(self._newest_shared, number)
        try:  # the version is out; a store that cannot compact now (disk full) compacts after the next fit
            self.store.compact(seq)
        except StoreError as exc:
            log.warning("ratings store: compaction failed (%s); retried after the next fit", exc)
        return number

    def adopt(self, params: ModelParams, source: str = "promoted") -> None:
        """Make ``params`` the dataset's parameters (saved as params.json) for every later fit."""
        try:
            save_params(self.model_dir, params)
        except OSError as exc:  # used all the same; the next start reads the old file
            log.error("could not save the promoted parameters to %s: %s", self.model_dir, exc)
        self.params, self.params_source, self.tune_budget = params, source, None

    def tune(self) -> ModelParams:
        """Tune the parameters on a validation split of the current ratings, save them (params.json) and use
        them for every later fit."""
        self.sc.setJobGroup(self.job_group, "tune the parameters", interruptOnCancel=True)
        seq = self.store.last_seq
        with self._ratings(*self.histories(seq)) as ratings:
            params, report = tuning.tune(self.sc, ratings, self.params, self.scale, self.tune_budget)
        if self._stopping.is_set():
            raise Cancelled("the trainer is stopping")
        try:
            save_params(self.model_dir, params, report)
        except OSError as exc:  # the pick is used; the next start tunes again
            log.error("could not save the tuned parameters to %s: %s", self.model_dir, exc)
        self.params, self.params_source, self.tune_budget = params, "tuned", None
        return params

    def cancel(self) -> None:
        """Stop: no further fit starts, and the running one's Spark jobs (and every later one) are cancelled.

        Plain ``cancelJobGroup`` cancels only the jobs running at that instant:
        ALS runs dozens of short jobs, and one asked between two of them went on
        training for many seconds after shutdown began.
        """
        self._stopping.set()
        try:
            internals.cancel_for_good(self.sc, self.job_group)
        except Exception as exc:  # the JVM may have had the signal too (process-group kill)
            log.debug("Spark had already stopped: %s", exc)

    def close(self) -> None:
        self.store.close()
