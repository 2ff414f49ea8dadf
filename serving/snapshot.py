"""Both models aligned with the catalogue, and the one top-k rule every list uses.

The engine keeps one :class:`Snapshot` in service and swaps it whole after a
retrain; ``evaluate.py`` builds one from models trained on its training split
and calls the same methods, so the figures it reports are those of the lists
as served.  NumPy only: no Spark here.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from model import Models, neighbour_sums, user_residuals
from storage.catalogue import UserRatings

SAMPLE_PER_K = 32  # top_k's sample: this many values per wanted one


def top_k(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best-scored of ``candidates`` (ascending rows), best first; equal scores in row order.

    Exact and deterministic, also when ties straddle the cut, in O(n) plus a sort of ``k``.  On long lists
    an evenly spaced sample's ``k``-th best value first bounds the answer from below (the whole list's
    ``k``-th best is at least that), so the selection runs on the few values above it: NumPy's
    argpartition took 220 us of a 20M-rating top-10 over 27,000 candidates.
    """
    candidates = np.asarray(candidates)
    if k <= 0 or len(candidates) == 0:
        return candidates[:0]
    values = scores[candidates]
    if len(candidates) > 4 * SAMPLE_PER_K * k:
        sample = values[::len(values) // (SAMPLE_PER_K * k)]
        keep = values >= np.partition(sample, len(sample) - k)[len(sample) - k]
        candidates, values = candidates[keep], values[keep]
    if len(candidates) > k:
        kth = values[np.argpartition(-values, k - 1)[k - 1]]
        above = candidates[values > kth]
        chosen = np.concatenate([above, candidates[values == kth][:k - len(above)]])
        values = scores[chosen]
    else:
        chosen = candidates
    return chosen[np.lexsort((chosen, -values))]


def candidates(counts: np.ndarray, min_count: int, rated_rows: np.ndarray | None = None,
               allowed: np.ndarray | None = None) -> np.ndarray:
    """The rows a list may show: at least ``min_count`` ratings, not rated by the user, and ``allowed``
    (such as a genre) where given.  The service and the offline evaluation both choose candidates here."""
    mask = counts >= min_count
    if allowed is not None:
        mask &= allowed
    if rated_rows is not None:
        mask[rated_rows] = False
    return np.flatnonzero(mask)


@dataclass(frozen=True)
class Moments:
    """Mean and second moment of a matrix's rows, so the spread of ``matrix @ w`` costs O(rank^2), not O(rows)."""

    mean: np.ndarray
    second: np.ndarray

    @classmethod
    def of(cls, matrix: np.ndarray) -> Moments:
        matrix = np.asarray(matrix, dtype=np.float64)
        if len(matrix) == 0:
            return cls(np.zeros(matrix.shape[1]), np.zeros((matrix.shape[1],) * 2))
        return cls(matrix.mean(axis=0), matrix.T @ matrix / len(matrix))

    def spread(self, w: np.ndarray) -> float:
        """The standard deviation of ``matrix @ w`` over the rows, or 1 when it is (about) constant."""
        variance = float(w @ self.second @ w - (self.mean @ w) ** 2)
        return math.sqrt(variance) if variance > 1e-18 else 1.0


@dataclass(frozen=True)
class UserVectors:
    """What the two models know of one user: rating bias and factors, and the ranking factors."""

    bias: float
    factors: np.ndarray
    ranking: np.ndarray


_FOLDING = threading.Lock()  # a user's entry in ``folded`` changes under it (module-wide: a Snapshot pickles)


@dataclass
class Snapshot:
    """Trained models aligned with the catalogue rows, plus users folded in against them.

    Replaced as a whole when a retrain finishes, so a reader holding one sees
    consistent models.  ``version`` and ``seq`` say which model and up to which
    posted request it was trained (the engine's business; zero offline).
    """

    models: Models
    movie_ids: np.ndarray  # the catalogue, sorted
    movie_bias: np.ndarray  # rating model, per catalogue row (zero for movies it has not seen)
    movie_factors: np.ndarray  # rating model, per catalogue row (zero rows for unseen movies)
    has_factors: np.ndarray  # rating model: which rows have factors
    rank_factors: np.ndarray  # ranking model, per catalogue row (zero rows for unseen movies); float32
    rank_unit: np.ndarray  # ranking factors scaled to unit length, for similar movies; float32
    has_rank: np.ndarray  # ranking model: which rows have factors
    rank_moments: Moments  # of rank_factors
    rating_moments: Moments | None  # of [movie_bias, movie_factors], for a model with the bias baseline
    score_matrix: np.ndarray  # [rank_factors, movie_bias, movie_factors] in float32: ranking_scores' one product
    score_columns: np.ndarray  # the same in column order: a product over every row took half the time (BLAS)
    neighbours: np.ndarray  # each catalogue row's neighbours as catalogue rows (-1: none); (rows, 0) when off
    similarity: np.ndarray  # and their similarities
    version: int = 0
    seq: int = 0
    trained_at: str = ""
    # A user's vectors since the version: UserRatings until asked for (folded in then), None when nothing is left.
    folded: dict[int, UserVectors | UserRatings | None] = field(default_factory=dict)

    LAYOUT = ("movie_bias", "movie_factors", "has_factors", "rank_factors", "rank_unit", "has_rank",
              "score_matrix", "score_columns", "neighbours", "similarity")

    @staticmethod
    def layouts(models: Models, movie_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays a snapshot serves from, in catalogue order (:attr:`LAYOUT`).  The trainer publishes them
        with each version, so API processes map them from the version's files (a host's processes share
        their pages) instead of each building its own copy at load."""
        rating, ranking = models.rating, models.ranking
        rows = rating.movie_rows(movie_ids)
        seen = rows >= 0
        movie_bias = np.where(seen, rating.movie_bias[np.maximum(rows, 0)], 0.0)
        movie_factors = np.where(seen[:, None], rating.movie_factors[np.maximum(rows, 0)], 0.0)
        rrows = ranking.movie_rows(movie_ids)
        # Single precision halves the time of the per-request product; the order it gives is what matters.
        rank_factors = np.where((rrows >= 0)[:, None], ranking.movie_factors[np.maximum(rrows, 0)], 0.0)
        norms = np.linalg.norm(rank_factors, axis=1, keepdims=True)
        rank_unit = np.divide(rank_factors, norms, out=np.zeros_like(rank_factors), where=norms > 0)
        width = models.neighbours.neighbours.shape[1] if models.blend is not None else 0
        neighbours = np.full((len(movie_ids), width), -1, dtype=np.int32)
        similarity = np.zeros((len(movie_ids), width), dtype=np.float32)
        if width:
            model_nb = models.neighbours.neighbours[rows[seen]]
            catalogue_row = np.searchsorted(movie_ids, rating.movie_ids).astype(np.int32)
            neighbours[seen] = np.where(model_nb >= 0, catalogue_row[np.maximum(model_nb, 0)], -1)
            similarity[seen] = models.neighbours.similarity[rows[seen]]
        score_matrix = np.column_stack([rank_factors, movie_bias, movie_factors]).astype(np.float32)
        return {"movie_bias": movie_bias, "movie_factors": movie_factors, "has_factors": movie_factors.any(axis=1),
                "rank_factors": rank_factors.astype(np.float32), "rank_unit": rank_unit.astype(np.float32),
                "has_rank": norms[:, 0] > 0, "score_matrix": score_matrix,
                "score_columns": np.asfortranarray(score_matrix), "neighbours": neighbours, "similarity": similarity}

    @classmethod
    def build(cls, models: Models, movie_ids: np.ndarray, version: int = 0, seq: int = 0,
              layout: dict[str, np.ndarray] | None = None) -> Snapshot:
        """A snapshot of ``models`` over the catalogue ``movie_ids``, from a published ``layout`` (mapped from
        the version's files) when there is one, else built here."""
        arrays = layout if layout and set(cls.LAYOUT) <= set(layout) else cls.layouts(models, movie_ids)
        trained_at = models.meta.get("created_at") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        movie_bias, movie_factors = arrays["movie_bias"], arrays["movie_factors"]
        rating_moments = Moments.of(np.column_stack([movie_bias, movie_factors])) \
            if models.rating.params.bias else None
        return cls(models, movie_ids, *(arrays[k] for k in cls.LAYOUT[:6]), Moments.of(arrays["rank_factors"]),
                   rating_moments, *(arrays[k] for k in cls.LAYOUT[6:]), version, seq, trained_at)

    def user_vectors(self, user: int) -> UserVectors | None:
        """The user's vectors: folded in since the last training, else trained; None for a stranger (or a user
        whose every rating was withdrawn or forgotten since)."""
        if user in self.folded:
            found = self.folded[user]
            if not isinstance(found, UserRatings):
                return found
            vectors = self.fold(found.rows, found.ratings)
            with _FOLDING:  # unless newer ratings replaced them meanwhile: theirs are folded at the next ask
                if self.folded.get(user) is found:
                    self.folded[user] = vectors
            return vectors
        rating, ranking = self.models.rating, self.models.ranking
        row, rank_row = rating.user_row(user), ranking.user_row(user)
        if row is None:
            return None
        ranking_vector = ranking.user_factors[rank_row] if rank_row is not None else np.zeros(ranking.rank)
        return UserVectors(float(rating.user_bias[row]), rating.user_factors[row], ranking_vector)

    def posted(self, user: int, ratings: UserRatings) -> None:
        """The user's ratings now (all of them, posted ones included): their vectors are folded in when the
        user is next asked about, in the process asked (most users who post are not, on most processes)."""
        with _FOLDING:
            self.folded[user] = ratings if len(ratings.rows) else None

    def fold(self, rows: np.ndarray, ratings: np.ndarray) -> UserVectors:
        """Both models' vectors for a user who rated the catalogue ``rows``, without retraining."""
        ids = self.movie_ids[rows]
        bias, factors = self.models.rating.fold_in(self.models.rating.movie_rows(ids), ratings)
        ranking = self.models.ranking.fold_in(self.models.ranking.movie_rows(ids), ratings)
        return UserVectors(bias, factors, ranking)

    def predicted_ratings(self, user: UserVectors | None, rows=slice(None), clip: bool = True,
                          rated: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Stars for catalogue ``rows``, clipped to the scale unless ``clip`` is false: the rating model,
        blended with the neighbourhood of the movies the user ``rated`` (catalogue rows, ratings).

        A stranger gets each movie's damped mean (the baseline without a user bias).
        """
        model = self.models.rating
        if user is None:
            baseline = model.mu + self.movie_bias[rows]
            return model.clip(baseline) if clip else baseline
        baseline = model.mu + user.bias + self.movie_bias[rows]
        dots = self.movie_factors[rows] @ user.factors
        blend = self.models.blend
        if blend is None or rated is None:
            return model.combine(baseline, dots, self.has_factors[rows], clip)
        rated_rows, ratings = rated
        residuals = user_residuals(len(self.movie_ids), rated_rows, ratings, model.mu + user.bias, self.movie_bias)
        index = np.arange(len(self.movie_ids))[rows] if isinstance(rows, slice) else rows
        sx, ss = neighbour_sums(self.neighbours, self.similarity, index, residuals, blend.k)
        return model.combine(baseline, dots, self.has_factors[rows], clip, knn=blend.knn(sx, ss), blend=blend)

    def ranking_scores(self, user: UserVectors) -> np.ndarray:
        """The score every catalogue row is ranked by for this user (never clipped, so no ties from clipping).

        The ranking model's ``x . y``, plus ``blend`` times the rating model's
        unclipped prediction, each divided by its spread over the catalogue for
        this user so the weight means the same for every user.
        """
        blend = self.models.ranking.params.blend
        if not blend:
            return self.rank_factors @ user.ranking.astype(np.float32)
        if self.rating_moments is not None:
            return self._blended_scores(user, self.score_columns)
        scores = self.rank_factors @ user.ranking.astype(np.float32)  # plain ALS: the prediction as it is
        predicted = self.predicted_ratings(user, clip=False)
        predicted_spread = Moments.of(predicted[:, None]).spread(np.ones(1))
        return scores / self.rank_moments.spread(user.ranking) + blend * predicted / predicted_spread

    def _blended_scores(self, user: UserVectors, matrix: np.ndarray) -> np.ndarray:
        """ranking_scores for the rows of ``matrix`` (rows of ``score_matrix``, in either memory order): with the
        bias baseline the prediction is a constant plus [b_movie, v] . [1, u], so both terms are one product."""
        rating_vector = np.concatenate(([1.0], user.factors))
        blend = self.models.ranking.params.blend
        weights = np.concatenate((user.ranking / self.rank_moments.spread(user.ranking),
                                  blend * rating_vector / self.rating_moments.spread(rating_vector)))
        return matrix @ weights.astype(np.float32)

    def top_n(self, user: UserVectors | None, candidates: np.ndarray, n: int,
              popularity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best candidate rows for the user by ``ranking_scores``, and those scores.

        A stranger gets the most popular candidates (``popularity`` per row, such as rating counts).
        """
        if user is not None and self.rating_moments is not None and self.models.ranking.params.blend \
                and 3 * len(candidates) < len(self.movie_ids):
            # Few candidates (min_count 25 leaves 9% of ml-latest-small's catalogue): score only those.
            # Equal scores still go in row order, as candidates are ascending.
            scores = self._blended_scores(user, self.score_matrix[candidates])
            best = top_k(scores, np.arange(len(candidates)), n)
            return candidates[best], scores[best]
        scores = popularity if user is None else self.ranking_scores(user)
        rows = top_k(scores, candidates, n)
        return rows, scores[rows]

    def similar(self, row: int, candidates: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` candidate rows most like ``row``, and their similarities: first its neighbours (the
        shrunk correlation of the rating residuals of their common raters, positive ones, most similar
        first), then the rest by cosine in the ranking model.  Raters' agreement puts Toy Story 2 first for
        Toy Story; the ranking model's cosine alone ranks movies often picked together, such as
        Independence Day, before it."""
        allowed = np.zeros(len(self.has_rank), dtype=bool)
        allowed[candidates] = True
        allowed[row] = False
        rows, sims = np.zeros(0, dtype=np.int64), np.zeros(0)
        if self.neighbours.shape[1]:
            near, close = self.neighbours[row], self.similarity[row]
            keep = (near >= 0) & (close > 0)
            keep[keep] = allowed[near[keep]]
            rows, sims = near[keep][:n].astype(np.int64), close[keep][:n].astype(np.float64)
            allowed[rows] = False
        if len(rows) < n and self.has_rank[row]:
            cosine = self.rank_unit @ self.rank_unit[row]
            more = top_k(cosine, np.flatnonzero(allowed & self.has_rank), n - len(rows))
            rows, sims = np.concatenate([rows, more]), np.concatenate([sims, cosine[more]])
        return rows, sims

