"""Diversified lists: maximal marginal relevance over the ranking model's unit item factors.

A list asked for with ``diversify=s`` (0 to 1) is chosen from the ``pool_size(n, s)`` best-scored candidates by
:func:`rerank`; ``s = 0`` is the plain top-n.  ``evaluate.py`` calls the same two functions, so the accuracy and
diversity it reports per strength are those of the lists the service would serve, and measures them with
:func:`intra_list_diversity` and :func:`distinct_genres`.  NumPy only: no Spark here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POOL_FACTOR = 3  # a diversified list of n picks among the 3n best...
POOL_EXTRA = 20  # ...and at least n + 20 of them, so short lists have room to choose
POOL_CAP = 200  # ...but never more than n + 200: the similarity matrix is pool x pool


def pool_size(n: int, strength: float) -> int:
    """How many best-scored candidates to fetch before re-ranking them down to ``n``: ``n`` itself at strength 0
    (nothing to re-rank), else ``max(3n, n + 20)`` capped at ``n + 200``."""
    if n <= 0 or strength == 0:
        return max(n, 0)
    return min(max(POOL_FACTOR * n, n + POOL_EXTRA), n + POOL_CAP)


def rerank(unit: np.ndarray, rows: np.ndarray, scores: np.ndarray, n: int,
           strength: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` of the pool ``rows`` (catalogue rows, best first, with their ranking ``scores``) by maximal marginal
    relevance, in the order picked, and their scores.

    Each pick is the argmax of ``(1 - strength) * relevance - strength * max cosine to the rows already picked``,
    relevance being the scores min-max scaled to [0, 1] within the pool and cosine the dot product of the rows of
    ``unit`` (unit vectors; a zero row has cosine 0 with everything).  Ties go to the earlier row of the pool, so
    the first pick is always the pool's first.  Strength 0 returns the first ``n`` untouched.
    """
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be within 0 and 1, not {strength}")
    rows, scores = np.asarray(rows), np.asarray(scores)
    if strength == 0 or len(rows) <= 1:
        return rows[:n], scores[:n]
    n = min(n, len(rows))
    values = scores.astype(np.float64)
    spread = values.max() - values.min()
    relevance = (values - values.min()) / spread if spread > 0 else np.zeros(len(rows))
    vectors = unit[rows].astype(np.float64)
    similarity = vectors @ vectors.T
    closest = np.zeros(len(rows))  # each row's max cosine to the picked rows (none yet: no penalty)
    gain_of_relevance = (1 - strength) * relevance
    free = np.ones(len(rows), dtype=bool)
    picked = np.empty(n, dtype=np.int64)
    for i in range(n):
        gain = np.where(free, gain_of_relevance - strength * closest, -np.inf)
        best = int(np.argmax(gain))  # the first of equal gains: pool order
        picked[i] = best
        free[best] = False
        closest = similarity[best] if i == 0 else np.maximum(closest, similarity[best])
    return rows[picked], scores[picked]


def intra_list_diversity(unit: np.ndarray, rows: np.ndarray) -> float:
    """The mean cosine distance ``1 - cos`` over the list's pairs of rows of ``unit`` (0 for fewer than 2 rows)."""
    rows = np.asarray(rows)
    if len(rows) < 2:
        return 0.0
    vectors = unit[rows].astype(np.float64)
    similarity = vectors @ vectors.T
    pairs = np.triu_indices(len(rows), k=1)
    return float(np.mean(1.0 - similarity[pairs]))


def distinct_genres(genres: Sequence[tuple[str, ...]], rows: np.ndarray) -> int:
    """How many different genres the movies at ``rows`` have between them (``genres`` per catalogue row)."""
    return len({genre for row in np.asarray(rows).tolist() for genre in genres[row]})
