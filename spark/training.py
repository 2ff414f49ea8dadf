"""Spark side of the models: fitting both with pyspark.mllib ALS and collecting them into the driver.

Input is an RDD of (user, movie, rating).  The rating model is the damped-bias
baseline (RDD operations) plus ``ALS.train`` on its residuals; the ranking
model is ``ALS.trainImplicit`` on the same ratings; the neighbourhood model is
the shrunk correlation of the residuals between each movie and the movies the
ranking model puts closest to it (Spark tasks over blocks of movies and over
users' ratings).  Output is a :class:`model.Models` of NumPy arrays.  Each
phase logs its duration.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext

import numpy as np

from model import (
    ModelParams,
    Models,
    NeighbourModel,
    NeighbourParams,
    RankingModel,
    RankingParams,
    RatingModel,
    RatingParams,
    Scale,
)
from progress import Ticker
from spark import internals

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


def _factors_to_arrays(features, ids: np.ndarray, rank: int) -> np.ndarray:
    """Place collected (id, vector) rows into a matrix aligned with ``ids`` (zero rows elsewhere)."""
    out = np.zeros((len(ids), rank))
    if features:
        fid = np.array([f[0] for f in features], dtype=np.int64)
        out[np.searchsorted(ids, fid)] = np.array([f[1] for f in features], dtype=np.float64).reshape(-1, rank)
    return out


@contextmanager
def materialized(rdd):
    """Cache ``rdd`` and compute it whole before ALS reads it, and free it afterwards: the Python side
    (the pickled ratings) is computed once, in its own job, and ALS's jobs read the cache."""
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
        where = sc.getCheckpointDir()
        if where is None:
            return set()
        path, fs = internals.hadoop_path(sc, where)
        return {str(s.getPath().toString()) for s in fs.listStatus(path)} if fs.exists(path) else set()

    before = listing()
    try:
        yield
    finally:
        for entry in listing() - before:
            path, fs = internals.hadoop_path(sc, entry)
            fs.delete(path, True)


@contextmanager
def packed(ratings):
    """The ratings as one (users, movies, ratings) triple of NumPy arrays per partition, cached for the block.

    Reading Python tuples costs about a microsecond a rating; after this one
    pass every pass over the arrays is vectorised (the baseline's sums, the
    residuals, the neighbourhood's pairs).
    """
    arrays = ratings.mapPartitions(lambda rows: [_pack(rows)]).cache()
    try:
        yield arrays
    finally:
        arrays.unpersist()


def _sums_by(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct keys, and the sum and the number of the values of each."""
    ids, inverse = np.unique(keys, return_inverse=True)
    return ids, np.bincount(inverse, values, len(ids)), np.bincount(inverse, None, len(ids)).astype(np.float64)


def _merge_sums(parts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partitions' ``_sums_by`` results added up per key."""
    ids, sums, counts = (np.concatenate([p[i] for p in parts]) for i in range(3))
    keys, inverse = np.unique(ids, return_inverse=True)
    return keys, np.bincount(inverse, sums, len(keys)), np.bincount(inverse, counts, len(keys))


PICKLE_BATCH = 10_000  # ratings per pickled list


def _als(sc, arrays, values_of, implicit: bool, rank: int, iterations: int, reg: float, seed: int,
         alpha: float = 0.0, blocks: int | None = None):
    """Train mllib's ALS (``trainALSModel`` or ``trainImplicitALSModel``, what ``ALS.train`` and
    ``ALS.trainImplicit`` call) on Ratings pickled in batches from ``arrays``; ``values_of(users, movies,
    ratings)`` gives each rating's value; ``blocks`` None: one per core.  Returns a
    ``MatrixFactorizationModel``."""
    def batches(part):
        users, movies, ratings = part
        values = np.broadcast_to(np.asarray(values_of(users, movies, ratings), dtype=np.float64), users.shape)
        cuts = [slice(s, s + PICKLE_BATCH) for s in range(0, len(users), PICKLE_BATCH)]
        return [internals.pickled_ratings(users[cut], movies[cut], values[cut]) for cut in cuts]

    with materialized(internals.as_bytes(arrays.flatMap(batches))) as pickled:
        return internals.train_als(sc, pickled, implicit, rank, iterations, reg, blocks or _blocks(sc), seed, alpha)


def _blocks(sc) -> int:
    """ALS's user and movie blocks: one per core.  mllib's default, half the input's partitions, gave 8
    blocks for 20M ratings on 2 cores, and more shuffling per iteration (rating model 74 -> 65 s,
    ranking model 116 -> 111 s with one block per core)."""
    return max(1, sc.defaultParallelism)


def fit_rating_model(sc, arrays, params: RatingParams, scale: Scale,
                     blocks: int | None = None) -> tuple[RatingModel, int]:
    """Fit the damped-bias baseline (vectorised sums per partition), then ALS on its residuals (or on
    raw ratings).  ``arrays``: the ratings as ``packed`` gives them; ``blocks``: ALS's (None: one per
    core; the factors depend on it, as each block draws its own starting values).

    Returns the model and the number of ratings it was fitted on.
    """

    with phase("baseline", live=True):
        parts = arrays.map(lambda p: (float(p[2].sum()), len(p[2]), *_sums_by(p[1], p[2]))).collect()
        total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
        if count == 0:
            raise ValueError("cannot train on zero ratings")
        mu = total / count
        movie_ids, sums, counts = _merge_sums([p[2:] for p in parts])
        movie_bias = (sums - counts * mu) / (counts + params.movie_damping)
        movie_bc = sc.broadcast((movie_ids, movie_bias))

        def user_sums(p):
            ids, bias = movie_bc.value
            return _sums_by(p[0], p[2] - mu - bias[np.searchsorted(ids, p[1])])

        user_ids, sums, counts = _merge_sums(arrays.map(user_sums).collect())
        user_bias = sums / (counts + params.user_damping)
        baseline_bc = sc.broadcast((mu, movie_ids, movie_bias, user_ids, user_bias))

    with_bias = params.bias

    def targets(users, movies, values):
        return _residuals(users, movies, values, baseline_bc.value) if with_bias else values

    with phase(f"rating model: ALS rank {params.rank}, {params.iterations} iterations", live=True), \
            checkpoints_removed(sc):
        als = _als(sc, arrays, targets, False, params.rank, params.iterations, params.reg, params.seed,
                   blocks=blocks)
    user_factors, movie_factors = _collect_factors(als, user_ids.astype(np.int64), movie_ids.astype(np.int64),
                                                   params.rank)
    movie_bc.destroy()
    baseline_bc.destroy()
    model = RatingModel(mu=mu, user_ids=user_ids.astype(np.int64), user_bias=user_bias, user_factors=user_factors,
                        movie_ids=movie_ids.astype(np.int64), movie_bias=movie_bias, movie_factors=movie_factors,
                        params=params, scale=scale)
    return model, count


def fit_ranking_model(sc, arrays, params: RankingParams, user_ids: np.ndarray,
                      movie_ids: np.ndarray, blocks: int | None = None) -> RankingModel:
    """Fit implicit-feedback ALS on every rating as an interaction (see ``RankingParams.preferences``);
    ``arrays``: the ratings as ``packed`` gives them; ``blocks`` as for ``fit_rating_model``."""

    preferences, means_bc = params.preferences, None
    if params.confidence == "signed" and params.centre == "user":
        ids, sums, counts = _merge_sums(arrays.map(lambda p: _sums_by(p[0], p[2])).collect())
        means_bc = sc.broadcast((ids, sums / counts))

    def values_of(users, movies, ratings):
        if means_bc is None:
            return preferences(ratings)
        ids, means = means_bc.value
        return preferences(ratings, means[np.searchsorted(ids, users)])

    with phase(f"ranking model: implicit ALS rank {params.rank}, {params.iterations} iterations", live=True), \
            checkpoints_removed(sc):
        als = _als(sc, arrays, values_of, True, params.rank, params.iterations, params.reg, params.seed,
                   params.alpha, blocks)
    user_factors, movie_factors = _collect_factors(als, user_ids, movie_ids, params.rank)
    if means_bc is not None:  # only now: collecting the factors ships the lineage that holds it
        means_bc.destroy()
    return RankingModel(user_ids=user_ids, user_factors=user_factors, movie_ids=movie_ids,
                        movie_factors=movie_factors, params=params)


BLOCK_CELLS = 1 << 24  # scores a candidate task holds at once (64 MB of float32)
FLUSH_HITS = 1 << 22  # co-rated pairs gathered (24 bytes each) before they are added up
REDUCE_CELLS = 1 << 20  # (movie, candidate) cells per block the tasks' sums are added up in (32 MB)


def fit_neighbour_model(sc, arrays, rating: RatingModel, ranking: RankingModel,
                        params: NeighbourParams) -> NeighbourModel:
    """Each movie's neighbours: its ``params.neighbours`` closest movies by the ranking model's scores
    (``y_i . y_j``, movies often chosen together), ordered by the shrunk Pearson correlation of the
    rating model's baseline residuals over their common raters.

    Cost grows with ratings x neighbours, not with the square of a user's
    ratings, so it scales to millions of ratings.  Empty when off, or when
    the rating model has no baseline to take residuals from.
    """
    n = len(rating.movie_ids)
    if not params.enabled or not rating.params.bias or n < 2 or params.neighbours < 1:
        return NeighbourModel.empty(n, params)
    if not np.array_equal(ranking.movie_ids, rating.movie_ids):
        raise ValueError("the ranking and the rating model must cover the same movies")
    width = min(params.neighbours, n - 1)
    with phase(f"neighbourhood: {width} candidates a movie, shrinkage {params.shrinkage:g}", live=True):
        candidates = _candidates(sc, ranking.movie_factors, width, params.candidates == "cosine")
        common, sxy, sxx, syy = _residual_sums(sc, arrays, rating, candidates)
        den = np.sqrt(sxx * syy)
        corr = np.divide(sxy, den, out=np.zeros_like(sxy), where=den > 0)
        support = np.maximum(common - 1.0, 0.0)
        shrunk = corr * support / (support + params.shrinkage)
        order = np.argsort(-shrunk, axis=1, kind="stable")
        similarity = np.take_along_axis(shrunk, order, axis=1).astype(np.float32)
        neighbours = np.take_along_axis(candidates, order, axis=1).astype(np.int32)
        neighbours[common[np.arange(n)[:, None], order] < 2] = -1  # no correlation without two common raters
    return NeighbourModel(neighbours, similarity, params)


def _candidates(sc, factors: np.ndarray, width: int, cosine: bool = True) -> np.ndarray:
    """Rows of the ``width`` best-scored other movies for every movie (``factors @ factors.T``, of unit rows
    with ``cosine``), in Spark tasks over blocks of movies, so the all-pairs product is never whole in one
    place."""
    n = len(factors)
    block = max(1, min(n, BLOCK_CELLS // n))
    if cosine:
        norms = np.linalg.norm(factors, axis=1, keepdims=True)
        factors = np.divide(factors, norms, out=np.zeros_like(factors), where=norms > 0)
    factors_bc = sc.broadcast(factors.astype(np.float32))

    def best(start: int):
        y = factors_bc.value
        stop = min(start + block, n)
        scores = y[start:stop] @ y.T
        scores[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        return start, np.argpartition(-scores, width - 1, axis=1)[:, :width].astype(np.int32)

    starts = list(range(0, n, block))
    parts = dict(sc.parallelize(starts, len(starts)).map(best).collect())
    factors_bc.destroy()
    return np.concatenate([parts[s] for s in starts])


def _residual_sums(sc, arrays, rating: RatingModel, candidates: np.ndarray):
    """Over every user who rated both a movie and its candidate neighbour: the number of such users and
    the sums of ``x_i * x_j``, ``x_i ** 2`` and ``x_j ** 2`` (residuals), as (movies, width) arrays.

    Ratings travel to user-keyed partitions as packed arrays; each task walks
    its users and adds up the co-rated (movie, candidate) pairs with bincount.
    The tasks' sums are added up per block of movies in the executors, so the
    driver receives one copy of the result however many tasks there are (a
    plain ``reduce`` gathered every task's whole array in the driver first).
    """
    parts = max(1, sc.defaultParallelism)
    n, width = candidates.shape
    model_bc = sc.broadcast((rating.mu, rating.movie_ids, rating.movie_bias, rating.user_ids, rating.user_bias))
    candidates_bc = sc.broadcast(candidates)

    def residuals(part):
        users, movies, values = part
        if not len(users):
            return
        movie_rows = np.searchsorted(model_bc.value[1], movies)
        x = _residuals(users, movies, values, model_bc.value)
        dest = users % parts
        for d in np.unique(dest).tolist():
            mine = dest == d
            yield d, (users[mine].tobytes(), movie_rows[mine].astype(np.int32).tobytes(),
                      x[mine].astype(np.float64).tobytes())

    def sums(chunks):
        chunks = list(chunks)
        users = np.concatenate([np.frombuffer(c[0], np.int64) for c in chunks] or [np.zeros(0, np.int64)])
        movie_rows = np.concatenate([np.frombuffer(c[1], np.int32) for c in chunks] or [np.zeros(0, np.int32)])
        x = np.concatenate([np.frombuffer(c[2], np.float64) for c in chunks] or [np.zeros(0)])
        order = np.argsort(users, kind="stable")
        users, movie_rows, x = users[order], movie_rows[order], x[order]
        edges = np.flatnonzero(np.diff(users)) + 1
        bounds = np.concatenate(([0], edges, [len(users)])).tolist()
        cand = candidates_bc.value
        total = np.zeros((4, n * width))
        position = np.full(n, -1, dtype=np.int64)
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        held = 0

        def flush():
            if pending:
                flat, xi, xj = (np.concatenate(a) for a in zip(*pending))
                total[0] += np.bincount(flat, minlength=n * width)
                total[1] += np.bincount(flat, xi * xj, minlength=n * width)
                total[2] += np.bincount(flat, xi * xi, minlength=n * width)
                total[3] += np.bincount(flat, xj * xj, minlength=n * width)
                pending.clear()

        for lo, hi in zip(bounds[:-1], bounds[1:]):
            rows, xs = movie_rows[lo:hi], x[lo:hi]
            position[rows] = np.arange(hi - lo)
            other = position[cand[rows]]  # (ratings of the user, width): where the user rated the candidate
            hit = other >= 0
            i, slot = np.nonzero(hit)
            if len(i):
                pending.append((rows[i].astype(np.int64) * width + slot, xs[i], xs[other[hit]]))
                held += len(i)
            position[rows] = -1
            if held > FLUSH_HITS:
                flush()
                held = 0
        flush()
        for start in range(0, n, rows_per_block):  # keyed by block: added up across tasks in the executors
            yield start, total[:, start * width:(start + rows_per_block) * width]

    rows_per_block = max(1, REDUCE_CELLS // width)
    try:
        blocks = dict(arrays.flatMap(residuals).partitionBy(parts, lambda d: d).values()
                      .mapPartitions(sums).reduceByKey(np.add, parts).collect())
    finally:
        model_bc.destroy()
        candidates_bc.destroy()
    total = np.concatenate([blocks[start] for start in range(0, n, rows_per_block)], axis=1)
    return tuple(t.reshape(n, width) for t in total)


def _residuals(users: np.ndarray, movies: np.ndarray, values: np.ndarray, baseline: tuple) -> np.ndarray:
    """``rating - (mu + b_movie + b_user)`` for ratings the baseline was fitted on; ``baseline``:
    (mu, movie ids, movie biases, user ids, user biases), ids sorted."""
    mu, movie_ids, movie_bias, user_ids, user_bias = baseline
    return values - mu - movie_bias[np.searchsorted(movie_ids, movies)] - user_bias[np.searchsorted(user_ids, users)]


def _pack(rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A partition's (user, movie, rating) rows as three arrays."""
    rows = list(rows)
    return (np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.int64),
            np.array([r[2] for r in rows], dtype=np.float64))


def _collect_factors(als, user_ids: np.ndarray, movie_ids: np.ndarray, rank: int):
    """Collect an mllib model's factors into matrices aligned with the ids, then free them in Spark."""
    # mllib's userFeatures() adds a Python map over the rows; the JVM's rows, unpickled in the driver, need none.
    with phase("collect factors"):
        user_factors = _factors_to_arrays(internals.factor_rows(als, users=True), user_ids, rank)
        movie_factors = _factors_to_arrays(internals.factor_rows(als, users=False), movie_ids, rank)
    internals.free_factors(als)
    return user_factors, movie_factors


def fit_models(sc, ratings, params: ModelParams, scale: Scale, stop=None) -> Models:
    """Fit the rating and the ranking model on the same ratings; ``meta`` holds the seconds of each.

    The ratings are read once, into arrays cached for the fits (``packed``);
    a caller's cache of ``ratings`` is left as it was.  ``stop()`` returning
    true between the fits raises Cancelled.
    """
    start = time.perf_counter()
    with packed(ratings) as arrays:
        rating, count = fit_rating_model(sc, arrays, params.rating, scale)
        rating_seconds = time.perf_counter() - start
        if stop is not None and stop():
            raise Cancelled("training stopped after the rating model")
        ranking = fit_ranking_model(sc, arrays, params.ranking, rating.user_ids, rating.movie_ids)
        ranking_seconds = time.perf_counter() - start - rating_seconds
        if stop is not None and stop():
            raise Cancelled("training stopped after the ranking model")
        neighbours = fit_neighbour_model(sc, arrays, rating, ranking, params.neighbours)
    total = time.perf_counter() - start
    seconds = {"rating": round(rating_seconds, 3), "ranking": round(ranking_seconds, 3),
               "neighbours": round(total - rating_seconds - ranking_seconds, 3), "total": round(total, 3)}
    log.info("trained the models on %d ratings (%d users, %d movies) in %.2f s: rating %.2f s, ranking %.2f s, "
             "neighbourhood %.2f s", count, len(rating.user_ids), len(rating.movie_ids), total,
             seconds["rating"], seconds["ranking"], seconds["neighbours"])
    return Models(rating, ranking, neighbours, {"n_ratings": count, "fit_seconds": seconds})


def infer_scale(ratings) -> Scale:
    """The rating scale of an RDD of (user, movie, rating), from its distinct rating values."""
    return Scale.infer(np.array(ratings.map(lambda t: t[2]).distinct().collect(), dtype=np.float64))


def collect_ratings(ratings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collect an RDD of (user, movie, rating) into three compact arrays in the driver."""

    def pack(rows):
        users, movies, values = _pack(rows)
        yield (users.astype(np.int32).tobytes(), movies.astype(np.int32).tobytes(),
               values.astype(np.float32).tobytes())

    parts = ratings.mapPartitions(pack).collect()

    def join(i: int, dtype) -> np.ndarray:
        return np.concatenate([np.frombuffer(p[i], dtype=dtype) for p in parts] or [np.zeros(0, dtype)])

    return join(0, np.int32), join(1, np.int32), join(2, np.float32)
