"""Spark side of the model: the damped-bias baseline and pyspark.mllib ALS on its residuals.

Input is an RDD of (user, movie, rating); output a :class:`model.FactorModel`
collected into the driver.  Each phase logs its duration.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import numpy as np

from model import FactorModel, Scale, TrainParams

log = logging.getLogger(__name__)


@contextmanager
def phase(name: str):
    """Log how long a phase of loading or training took."""
    start = time.perf_counter()
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
        out[np.searchsorted(ids, fid)] = np.array([list(f[1]) for f in features])
    return out


def train(sc, ratings, params: TrainParams, scale: Scale) -> FactorModel:
    """Fit the baseline with RDD operations, then ALS on the residuals (or on raw ratings)."""
    from pyspark.mllib.recommendation import ALS, Rating

    start = time.perf_counter()
    ratings = ratings.cache()
    with phase("baseline"):
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
    with phase(f"ALS rank {params.rank}, {params.iterations} iterations"):
        als = ALS.train(targets, rank=params.rank, iterations=params.iterations,
                        lambda_=params.reg, seed=params.seed)
    with phase("collect factors"):
        user_factors = _factors_to_arrays(als.userFeatures().collect(), user_ids, params.rank)
        movie_factors = _factors_to_arrays(als.productFeatures().collect(), movie_ids, params.rank)
    # Free what Spark keeps per training, so a long-running service does not accumulate it.
    als._java_model.userFeatures().unpersist(False)
    als._java_model.productFeatures().unpersist(False)
    bi.destroy()
    bu.destroy()
    ratings.unpersist()
    model = FactorModel(mu=mu, user_ids=user_ids, user_bias=user_bias_arr, user_factors=user_factors,
                        movie_ids=movie_ids, movie_bias=movie_bias_arr, movie_factors=movie_factors,
                        params=params, scale=scale)
    log.info("trained on %d ratings (%d users, %d movies) in %.2f s",
             count, len(user_ids), len(movie_ids), time.perf_counter() - start)
    model.meta["n_ratings"] = count
    model.meta["fit_seconds"] = round(time.perf_counter() - start, 3)
    return model


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
