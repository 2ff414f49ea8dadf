"""Spark side of the models: fitting both with pyspark.mllib ALS and collecting them into the driver.

Input is an RDD of (user, movie, rating).  The rating model is the damped-bias
baseline (RDD operations) plus ``ALS.train`` on its residuals; the ranking
model is ``ALS.trainImplicit`` on the same ratings.  Output is a
:class:`model.Models` of NumPy arrays.  Each phase logs its duration.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext

import numpy as np

from datasets.progress import Ticker
from model import ModelParams, Models, RankingModel, RankingParams, RatingModel, RatingParams, Scale

log = logging.getLogger(__name__)


class Cancelled(RuntimeError):
    """Training was stopped on request between two Spark jobs."""


@contextmanager
def phase(name: str, live: bool = False):
    """Log how long a phase of loading or training took; ``live``: tick its running time on a terminal."""
    start = time.perf_counter()
    with Ticker(name) if live else nullcontext():
        yield
    log.info("%s took %.2f s", name, time.perf_counter() - start)


def _pairs_to_arrays(pairs) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([p[0] for p in pairs], dtype=np.int64)
    order = np.argsort(ids)
    values = np.array([p[1] for p in pairs], dtype=np.float64)
    return ids[order], values[order]


def _factors_to_arrays(features, ids: np.ndarray, rank: int) -> np.ndarray:
    """Place collected (id, vector) rows into a matrix aligned with ``ids`` (zero rows elsewhere)."""
    out = np.zeros((len(ids), rank))
    if features:
        fid = np.array([f[0] for f in features], dtype=np.int64)
        out[np.searchsorted(ids, fid)] = np.array([f[1] for f in features], dtype=np.float64).reshape(-1, rank)
    return out


@contextmanager
def materialized(rdd):
    """Cache ``rdd`` and compute it whole before mllib's ALS looks at it, and free it afterwards.

    ``ALS.train`` starts with ``ratings.first()``: a Spark job that stops
    reading a Python worker after one row, and the worker, finding its socket
    closed, prints a BrokenPipeError traceback.  Read from the cache, the first
    row needs no Python worker.
    """
    rdd.cache().count()
    try:
        yield rdd
    finally:
        rdd.unpersist()


@contextmanager
def checkpoints_removed(sc):
    """Delete the checkpoint files ALS writes during the block (on any Hadoop file system).

    ALS checkpoints its intermediate factors every few iterations and never
    deletes them: without this a long-running service would fill its disk,
    one set of files per retrain.
    """
    def listing() -> set[str]:
        where = sc._jsc.sc().getCheckpointDir()
        if where.isEmpty():
            return set()
        path = sc._jvm.org.apache.hadoop.fs.Path(where.get())
        fs = path.getFileSystem(sc._jsc.hadoopConfiguration())
        return {str(s.getPath().toString()) for s in fs.listStatus(path)} if fs.exists(path) else set()

    before = listing()
    try:
        yield
    finally:
        hadoop = sc._jvm.org.apache.hadoop.fs.Path
        for entry in listing() - before:
            path = hadoop(entry)
            path.getFileSystem(sc._jsc.hadoopConfiguration()).delete(path, True)


def fit_rating_model(sc, ratings, params: RatingParams, scale: Scale) -> tuple[RatingModel, int]:
    """Fit the baseline with RDD operations, then ALS on the residuals (or on raw ratings).

    Returns the model and the number of ratings it was fitted on.
    """
    from pyspark.mllib.recommendation import ALS, Rating

    with phase("baseline", live=True):
        total, count = ratings.map(lambda t: (t[2], 1)).reduce(lambda a, b: (a[0] + b[0], a[1] + b[1]))
        if count == 0:
            raise ValueError("cannot train on zero ratings")
        mu = total / count
        movie_damping, user_damping = params.movie_damping, params.user_damping
        movie_bias = (
            ratings.map(lambda t: (t[1], (t[2] - mu, 1)))
            .reduceByKey(lambda a, b: (a[0] + b[0], a[1] + b[1]))
            .mapValues(lambda s: s[0] / (s[1] + movie_damping))
            .collect()
        )
        movie_ids, movie_bias_arr = _pairs_to_arrays(movie_bias)
        bi = sc.broadcast(dict(movie_bias))
        user_bias = (
            ratings.map(lambda t: (t[0], (t[2] - mu - bi.value[t[1]], 1)))
            .reduceByKey(lambda a, b: (a[0] + b[0], a[1] + b[1]))
            .mapValues(lambda s: s[0] / (s[1] + user_damping))
            .collect()
        )
        user_ids, user_bias_arr = _pairs_to_arrays(user_bias)
        bu = sc.broadcast(dict(user_bias))

    if params.bias:
        targets = ratings.map(lambda t: Rating(t[0], t[1], t[2] - mu - bi.value[t[1]] - bu.value[t[0]]))
    else:
        targets = ratings.map(lambda t: Rating(t[0], t[1], t[2]))
    with phase(f"rating model: ALS rank {params.rank}, {params.iterations} iterations", live=True), \
            materialized(targets), \
            checkpoints_removed(sc):
        als = ALS.train(targets, rank=params.rank, iterations=params.iterations,
                        lambda_=params.reg, seed=params.seed)
    user_factors, movie_factors = _collect_factors(als, user_ids, movie_ids, params.rank)
    bi.destroy()
    bu.destroy()
    model = RatingModel(mu=mu, user_ids=user_ids, user_bias=user_bias_arr, user_factors=user_factors,
                        movie_ids=movie_ids, movie_bias=movie_bias_arr, movie_factors=movie_factors,
                        params=params, scale=scale)
    return model, count


def fit_ranking_model(sc, ratings, params: RankingParams, user_ids: np.ndarray,
                      movie_ids: np.ndarray) -> RankingModel:
    """Fit implicit-feedback ALS on every rating as an interaction (see ``RankingParams.preferences``)."""
    from pyspark.mllib.recommendation import ALS, Rating

    preferences = params.preferences
    interactions = ratings.map(lambda t: Rating(t[0], t[1], float(preferences(t[2]))))
    with phase(f"ranking model: implicit ALS rank {params.rank}, {params.iterations} iterations", live=True), \
            materialized(interactions), checkpoints_removed(sc):
        als = ALS.trainImplicit(interactions, rank=params.rank, iterations=params.iterations,
                                lambda_=float(params.reg), alpha=float(params.alpha), seed=params.seed)
    user_factors, movie_factors = _collect_factors(als, user_ids, movie_ids, params.rank)
    return RankingModel(user_ids=user_ids, user_factors=user_factors, movie_ids=movie_ids,
                        movie_factors=movie_factors, params=params)


def _collect_factors(als, user_ids: np.ndarray, movie_ids: np.ndarray, rank: int):
    """Collect an mllib model's factors into matrices aligned with the ids, then free them in Spark."""
    # mllib's userFeatures() adds a Python map over the rows; the JVM's rows, unpickled in the driver, need none.
    with phase("collect factors"):
        user_factors = _factors_to_arrays(als.call("getUserFeatures").collect(), user_ids, rank)
        movie_factors = _factors_to_arrays(als.call("getProductFeatures").collect(), movie_ids, rank)
    # Free what Spark keeps per training, so a long-running service does not accumulate it.
    als._java_model.userFeatures().unpersist(False)
    als._java_model.productFeatures().unpersist(False)
    return user_factors, movie_factors


def fit_models(sc, ratings, params: ModelParams, scale: Scale, stop=None) -> Models:
    """Fit the rating and the ranking model on the same ratings; ``meta`` holds the seconds of each.

    The ratings are cached for the two fits only if the caller has not cached
    them; a caller's cache is left as it was.  ``stop()`` returning true
    between the fits raises Cancelled.
    """
    start = time.perf_counter()
    owned = not ratings.is_cached
    if owned:
        ratings = ratings.cache()
    try:
        rating, count = fit_rating_model(sc, ratings, params.rating, scale)
        rating_seconds = time.perf_counter() - start
        if stop is not None and stop():
            raise Cancelled("training stopped after the rating model")
        ranking = fit_ranking_model(sc, ratings, params.ranking, rating.user_ids, rating.movie_ids)
    finally:
        if owned:
            ratings.unpersist()
    total = time.perf_counter() - start
    log.info("trained both models on %d ratings (%d users, %d movies) in %.2f s: rating %.2f s, ranking %.2f s",
             count, len(rating.user_ids), len(rating.movie_ids), total, rating_seconds, total - rating_seconds)
    return Models(rating, ranking, {"n_ratings": count,
                                    "fit_seconds": {"rating": round(rating_seconds, 3),
                                                    "ranking": round(total - rating_seconds, 3),
                                                    "total": round(total, 3)}})


def infer_scale(ratings) -> Scale:
    """The rating scale of an RDD of (user, movie, rating), from its distinct rating values."""
    return Scale.infer(np.array(ratings.map(lambda t: t[2]).distinct().collect(), dtype=np.float64))


def collect_ratings(ratings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collect an RDD of (user, movie, rating) into three compact arrays in the driver."""

    def pack(rows):
        rows = list(rows)
        yield (np.array([r[0] for r in rows], dtype=np.int32).tobytes(),
               np.array([r[1] for r in rows], dtype=np.int32).tobytes(),
               np.array([r[2] for r in rows], dtype=np.float32).tobytes())

    parts = ratings.mapPartitions(pack).collect()

    def join(i: int, dtype) -> np.ndarray:
        return np.concatenate([np.frombuffer(p[i], dtype=dtype) for p in parts] or [np.zeros(0, dtype)])

    return join(0, np.int32), join(1, np.int32), join(2, np.float32)
