"""Why this movie: the user's own ratings that did most for each recommended movie.

A list's predicted ratings blend the rating model with the item neighbourhood
(``model.neighbour_sums``): a recommended movie is lifted by ``similarity *
residual`` from each of its ``k`` most similar neighbours the user rated.  Those
terms are the honest explanation, so they come first.  A movie none of whose
neighbours the user rated (or with the neighbourhood off, or for a stranger) is
explained by the ranking model instead: the rated movies most like it by cosine.
NumPy only, a few calls for a whole list: it is served beside each top-n.
"""

from __future__ import annotations

import numpy as np

from model import user_residuals
from serving.snapshot import Snapshot, UserVectors

Reasons = list[list[tuple[int, float]]]


def because(snapshot: Snapshot, user: UserVectors | None, rated_rows: np.ndarray, ratings: np.ndarray,
            rows: np.ndarray, per_movie: int = 3) -> Reasons:
    """For each catalogue row of ``rows``, up to ``per_movie`` (catalogue row, the user's rating) of the user's
    rated movies (``rated_rows``, ``ratings``) that did most for it, best first.

    First the neighbourhood: of the neighbours ``neighbour_sums`` uses (the first ``blend.k`` with positive
    similarity that the user rated), those with a positive contribution ``similarity * residual``, largest
    first (a disliked movie is no reason; ties: the more similar neighbour).  Where that leaves nothing, the
    ranking model: rated movies with a positive cosine to the row, most similar first (ties: the order of
    ``rated_rows``), only those rated at or above the user's mean rating unless none of them qualifies.
    Nothing for a user with no ratings.
    """
    rows = np.asarray(rows, dtype=np.int64)
    rated_rows = np.asarray(rated_rows, dtype=np.int64)
    ratings = np.asarray(ratings, dtype=np.float64)
    reasons: Reasons = [[] for _ in range(len(rows))]
    if not len(rows) or not len(rated_rows) or per_movie <= 0:
        return reasons
    left = np.ones(len(rows), dtype=bool)  # rows the neighbourhood does not explain
    blend = snapshot.models.blend
    if user is not None and blend is not None and snapshot.neighbours.shape[1]:
        picked, stars, good = _neighbourhood(snapshot, user, rated_rows, ratings, rows, blend.k, per_movie)
        _collect(reasons, picked, stars, good)
        left = ~good[:, 0]
    if left.any():
        _collect(reasons, *_ranking(snapshot, rated_rows, ratings, rows[left], per_movie), where=np.flatnonzero(left))
    return reasons


def _neighbourhood(snapshot: Snapshot, user: UserVectors, rated_rows: np.ndarray, ratings: np.ndarray,
                   rows: np.ndarray, k: int, per_movie: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``per_movie`` neighbours of each row by contribution: their rows, the user's ratings of them,
    and which are real reasons (positive); each ``(len(rows), per_movie)`` or narrower."""
    model = snapshot.models.rating
    residuals = user_residuals(len(snapshot.movie_ids), rated_rows, ratings, model.mu + user.bias,
                               snapshot.movie_bias)
    near = snapshot.neighbours[rows]
    s = snapshot.similarity[rows]
    x = residuals[near]  # the padding's -1 reads the trailing NaN
    use = (s > 0) & (x == x)  # as neighbour_sums: positive similarity, rated
    if k < use.shape[1]:
        use &= np.cumsum(use, axis=1, dtype=np.int32) <= k
    contribution = np.where(use, s * x, 0.0)
    best = np.argsort(-contribution, axis=1, kind="stable")[:, :per_movie]
    picked = np.take_along_axis(near, best, axis=1)
    stars = np.full(len(snapshot.movie_ids) + 1, np.nan)
    stars[rated_rows] = ratings
    return picked, stars[picked], np.take_along_axis(contribution, best, axis=1) > 0


def _ranking(snapshot: Snapshot, rated_rows: np.ndarray, ratings: np.ndarray, rows: np.ndarray,
             per_movie: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ranking model's reasons for ``rows``: the rated movies most like each by cosine over ``rank_unit``,
    as :func:`_neighbourhood` returns them."""
    pool = snapshot.has_rank[rated_rows]
    liked = pool & (ratings >= ratings.mean())
    if liked.any():
        pool = liked
    pool_rows, pool_stars = rated_rows[pool], ratings[pool]
    cosine = snapshot.rank_unit[rows] @ snapshot.rank_unit[pool_rows].T
    cosine[rows[:, None] == pool_rows[None, :]] = 0.0  # a row is no reason for itself
    best = np.argsort(-cosine, axis=1, kind="stable")[:, :per_movie]
    return pool_rows[best], pool_stars[best], np.take_along_axis(cosine, best, axis=1) > 0


def _collect(reasons: Reasons, picked: np.ndarray, stars: np.ndarray, good: np.ndarray,
             where: np.ndarray | None = None) -> None:
    """Append each row's good (row, rating) pairs, in order, to ``reasons[where[i]]`` (or ``reasons[i]``)."""
    targets = range(len(picked)) if where is None else where.tolist()
    for i, p, r, g in zip(targets, picked.tolist(), stars.tolist(), good.tolist()):
        reasons[i].extend((row, rating) for row, rating, ok in zip(p, r, g) if ok)
