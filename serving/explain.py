"""Why this movie: the user's own ratings that did most for each recommended movie.

A list's predicted ratings blend the rating model with the item neighbourhood
(``model.neighbour_sums``): a recommended movie is lifted by ``similarity *
residual`` from each of its ``k`` most similar neighbours the user rated.  Those
terms are the honest explanation, so they come first.  A movie none of whose
neighbours the user rated (or with the neighbourhood off, or for a stranger) is
explained by the ranking model instead: the rated movies most like it by cosine.
NumPy only, and a few calls for a whole list, as it is meant to go beside each top-n.
"""

from __future__ import annotations

import numpy as np

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
        which, picked, stars = _neighbourhood(snapshot, user, rated_rows, ratings, rows, blend.k, per_movie)
        _collect(reasons, which, picked, stars)
        left[which] = False
    if left.any():
        where = np.flatnonzero(left)
        which, picked, stars = _ranking(snapshot, rated_rows, ratings, rows[where], per_movie)
        _collect(reasons, where[which], picked, stars)
    return reasons


def _best(values: np.ndarray, per_row: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of each row's ``per_row`` largest positive ``values`` (changed in place): by row, then
    largest first, ties by column.  One argmax over the table per place: a stable sort of a whole 10 x 500
    table took 180 us here, three argmaxes about 20 us."""
    at = np.arange(len(values))
    columns = np.zeros((len(values), min(per_row, values.shape[1])), dtype=np.int64)
    good = np.zeros(columns.shape, dtype=bool)
    for place in range(columns.shape[1]):
        best = columns[:, place] = values.argmax(axis=1)  # the first of equals: the lower column
        good[:, place] = values[at, best] > 0
        if not good[:, place].any():
            break
        values[at, best] = -np.inf
    return np.nonzero(good)[0], columns[good]


def _neighbourhood(snapshot: Snapshot, user: UserVectors, rated_rows: np.ndarray, ratings: np.ndarray,
                   rows: np.ndarray, k: int, per_movie: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The neighbourhood's reasons: for each reason, its index in ``rows``, the neighbour's catalogue row and the
    user's rating of it, by row and then best first."""
    offset = snapshot.models.rating.mu + user.bias
    stars = np.full(len(snapshot.movie_ids) + 1, np.nan)  # the user's ratings, and NaN for the -1 padding
    stars[rated_rows] = ratings
    near = snapshot.neighbours[rows]
    s = snapshot.similarity[rows]
    x = stars[near] - offset - snapshot.movie_bias[near]  # user_residuals' arithmetic: the same residuals
    use = (s > 0) & (x == x)  # as neighbour_sums: positive similarity, rated
    if k < use.shape[1]:
        use &= np.cumsum(use, axis=1, dtype=np.int32) <= k
    which, column = _best(np.where(use, s * x, 0.0), per_movie)
    picked = near[which, column]
    return which, picked, stars[picked]


def _ranking(snapshot: Snapshot, rated_rows: np.ndarray, ratings: np.ndarray, rows: np.ndarray,
             per_movie: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ranking model's reasons for ``rows``, as :func:`_neighbourhood` gives them: the rated movies most like
    each by cosine over ``rank_unit``."""
    pool = snapshot.has_rank[rated_rows]
    liked = pool & (ratings >= ratings.mean())
    if liked.any():
        pool = liked
    pool_rows, pool_stars = rated_rows[pool], ratings[pool]
    cosine = snapshot.rank_unit[rows] @ snapshot.rank_unit[pool_rows].T
    cosine[rows[:, None] == pool_rows[None, :]] = 0.0  # a row is no reason for itself
    which, column = _best(cosine, per_movie)
    return which, pool_rows[column], pool_stars[column]


def _collect(reasons: Reasons, which: np.ndarray, picked: np.ndarray, stars: np.ndarray) -> None:
    """Append each (row, rating) to ``reasons[which[i]]``, in the order given."""
    for i, row, rating in zip(which.tolist(), picked.tolist(), stars.tolist()):
        reasons[i].append((row, rating))
