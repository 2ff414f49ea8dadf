"""The trained models as NumPy arrays: scoring and one-user fold-in.

Two models divide the work.  The rating model (bias baseline plus explicit ALS
on its residuals) predicts how many stars a user would give a movie; it is
fitted to RMSE.  The ranking model (implicit-feedback ALS) scores which movies
a user is likely to pick; it orders the top-N lists.  Spark fits both
(spark/training.py) and publishes them as a model version (storage/versions.py);
API processes answer every request from these arrays, so no request starts a Spark
job, and this module imports no Spark.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

import numpy as np


class ModelError(Exception):
    """A saved model is missing, damaged or does not match; the message says which."""


class TransientModelError(ModelError):
    """A model that could not be read or installed for a passing reason (too many open files, an I/O error,
    no memory for a mapping, a full disk): nothing says it is damaged, so it is worth trying again later."""


@dataclass(frozen=True)
class RatingParams:
    """Everything that determines the rating model, besides the data."""

    rank: int = 12
    iterations: int = 20
    reg: float = 0.15  # ALS lambda (pyspark.mllib scales it by each user's / movie's count)
    seed: int = 42
    bias: bool = True  # train ALS on the residuals of the damped-bias baseline
    user_damping: float = 5.0
    movie_damping: float = 10.0

    def as_dict(self) -> dict:
        return asdict(self)


CONFIDENCES = ("binary", "signed")


@dataclass(frozen=True)
class RankingParams:
    """Everything that determines the ranking model (``ALS.trainImplicit``), besides the data.

    ``confidence`` says what each rating tells the model: ``binary``, every
    rating is one interaction of confidence ``1 + alpha``; ``signed``, a rating
    above ``threshold`` is a positive interaction and one below a known
    dislike, each of confidence ``1 + alpha * |rating - threshold|``.
    ``blend`` mixes the rating model into the order (see ``serving.Snapshot.top_n``);
    it changes no factor, only how lists are ranked.
    """

    rank: int = 128
    iterations: int = 10
    reg: float = 0.1
    alpha: float = 0.3
    confidence: str = "signed"
    threshold: float = 2.5
    centre: str = "fixed"  # signed: the dislike/like boundary, "fixed" (threshold) or "user" (the user's mean rating)
    seed: int = 42
    blend: float = 0.5  # weight of the rating model's (standardised) prediction in the ranking score

    def __post_init__(self) -> None:
        if self.confidence not in CONFIDENCES:
            raise ModelError(f"confidence must be one of {', '.join(CONFIDENCES)}, not {self.confidence!r}")
        if self.centre not in ("fixed", "user"):
            raise ModelError(f"centre must be fixed or user, not {self.centre!r}")

    def as_dict(self) -> dict:
        return asdict(self)

    def preferences(self, ratings, user_means=None):
        """The values handed to ``trainImplicit`` for these ratings (NumPy arrays or one float);
        ``user_means``: each rating's user's mean rating, for ``centre`` "user"."""
        if self.confidence == "binary":
            return np.ones_like(ratings, dtype=np.float64) if isinstance(ratings, np.ndarray) else 1.0
        return ratings - (user_means if self.centre == "user" else self.threshold)


@dataclass(frozen=True)
class NeighbourParams:
    """The item-neighbourhood model, and how it and ALS blend into the predicted rating.

    Each movie keeps ``neighbours`` candidates (the movies closest to it in
    the ranking model's factors, by ``candidates``: cosine, or the raw dot
    product, which favours popular movies) with the Pearson correlation of the baseline
    residuals over their common raters, shrunk by ``(n - 1) / (n - 1 + shrinkage)``.
    A prediction takes the ``k`` most similar (positive) neighbours the user
    rated: ``knn = sum(s * x) / (sum(s) + support)``, ``x`` the user's
    residuals.  The predicted rating is ``baseline + intercept + als_weight *
    (u . v) + knn_weight * knn``; the weights are least squares on a
    validation split (the defaults were fitted on ml-latest-small's).
    Only a rating model with the bias baseline has residuals to blend.
    """

    enabled: bool = True
    neighbours: int = 200
    candidates: str = "dot"  # how the ranking model's factors pick them: "dot" (measured better) or "cosine"
    shrinkage: float = 100.0
    k: int = 40
    # Fitted on a validation split carved from ml-latest-small's seed-42 training part, default rating model.
    support: float = 0.5
    intercept: float = -0.0452
    als_weight: float = 0.5472
    knn_weight: float = 1.366

    def __post_init__(self) -> None:
        if self.candidates not in ("cosine", "dot"):
            raise ModelError(f"neighbour candidates must be cosine or dot, not {self.candidates!r}")

    def as_dict(self) -> dict:
        return asdict(self)

    def knn(self, sx, ss):
        """The neighbourhood term from ``neighbour_sums``: their weighted mean, shrunk towards 0 by ``support``."""
        return sx / (ss + self.support)


class _Range(NamedTuple):
    """The values a number parameter may take: ``low`` (itself only when ``closed``) to ``high``."""

    low: float = -math.inf
    high: float = math.inf
    closed: bool = True


_ALS = {"rank": _Range(1, 1000), "iterations": _Range(1, 100), "seed": _Range(0, 2**31 - 1)}
# Each number parameter's allowed values; one not named here may be any finite number.  Every value must also
# have its default's type (an int where the default is an int, a bool for a bool; an int will do for a float).
PARAM_RANGES = {
    # reg 0 leaves a user with fewer ratings than the rank a singular solve (fold-in, and ALS's own Cholesky);
    # damping 0 is the undamped mean (a tuning step).
    RatingParams: {**_ALS, "reg": _Range(0, 1e6, closed=False), "user_damping": _Range(0),
                   "movie_damping": _Range(0)},
    # Implicit ALS adds Y^T Y to every solve, so reg 0 stays solvable.  blend is the rating model's weight
    # beside the ranking model's 1 (both standardised): 0 is off, above 1 the rating model leads; no
    # negative weight, which would rank what the user is predicted to dislike first.
    RankingParams: {**_ALS, "reg": _Range(0, 1e6), "alpha": _Range(0), "blend": _Range(0)},
    # neighbours and k are counts (a matrix's width, a top-k); support 0 makes knn 0 / 0 where the user rated
    # none of a movie's neighbours.
    NeighbourParams: {"neighbours": _Range(1, 5000), "k": _Range(1, 5000), "shrinkage": _Range(0),
                      "support": _Range(0, closed=False)},
}


def _from_dict(cls, data, where: str):
    """Build a params dataclass from a dict (missing keys keep the defaults), naming any unknown key or
    value outside PARAM_RANGES in a one-line ModelError."""
    if not isinstance(data, dict):
        raise ModelError(f"{where}: expected a JSON object of parameters, not {_shown(data)}")
    defaults = {f.name: f.default for f in fields(cls)}
    unknown = sorted(set(data) - set(defaults))
    if unknown:
        raise ModelError(f"{where}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
    values = {key: _checked(type(defaults[key]), PARAM_RANGES.get(cls, {}).get(key, _Range()), f"{where} {key}",
                            value) for key, value in data.items()}
    try:
        return cls(**values)
    except ModelError as exc:  # a string outside its choices
        raise ModelError(f"{where}: {exc}") from None


def _checked(kind: type, allowed: _Range, where: str, value):
    """``value`` if it has the type ``kind`` (an int or a float for a float, then as a float) and, for a
    number, is finite and within ``allowed``; else a ModelError saying what is allowed."""
    if kind not in (int, float):
        if isinstance(value, kind):
            return value
        raise ModelError(f"{where}: expected {'true or false' if kind is bool else 'a string'}, not {_shown(value)}")
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind is int and not isinstance(number, int):
        number = None
    elif kind is float and number is not None:
        number = float(number) if abs(number) < 1e300 else math.inf  # float() of a huge int overflows
    if number is None or not (isinstance(number, int) or math.isfinite(number)) or number > allowed.high \
            or not (allowed.low <= number if allowed.closed else allowed.low < number):
        raise ModelError(f"{where}: expected {_describe(kind, allowed)}, not {_shown(value)}")
    return number


def _describe(kind: type, allowed: _Range) -> str:
    """``allowed`` in words: "an integer from 1 to 1000", "a finite number above 0"."""
    low, high = (f"{b:g}" if isinstance(b, float) else str(b) for b in allowed[:2])
    bounds = [f"{'of at least' if allowed.closed else 'above'} {low}"] if allowed.low > -math.inf else []
    bounds += [f"at most {high}"] if allowed.high < math.inf else []
    noun = "an integer" if kind is int else "a number" if len(bounds) == 2 else "a finite number"
    if len(bounds) == 2 and allowed.closed:
        return f"{noun} from {low} to {high}"
    return " ".join([noun, " and ".join(bounds)]).strip()


def _shown(value) -> str:
    """A value as JSON would spell it (one line, cut to 60 characters), else its repr."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class TuneBudget:
    """How much tuning a new dataset may do (trainer and evaluate.py): ``fits`` candidate fits, which
    makes the pick the same on any machine, and a time cap in seconds as a safety net only (no new fit
    starts after it; the report says when it stopped the search)."""

    fits: int = 16
    seconds: float = 3600.0


@dataclass(frozen=True)
class ModelParams:
    """The parameters of every model."""

    rating: RatingParams = field(default_factory=RatingParams)
    ranking: RankingParams = field(default_factory=RankingParams)
    neighbours: NeighbourParams = field(default_factory=NeighbourParams)

    def as_dict(self) -> dict:
        return {"rating": self.rating.as_dict(), "ranking": self.ranking.as_dict(),
                "neighbours": self.neighbours.as_dict()}

    @classmethod
    def from_dict(cls, data: dict, where: str = "params") -> ModelParams:
        """Read ``{"rating": {...}, "ranking": {...}, "neighbours": {...}}``; missing parts and keys keep
        the defaults.

        A flat dict of rating-model keys (what ``--tune --save`` wrote before
        there was a ranking model) is read as the rating model's.
        """
        parts = {"rating": RatingParams, "ranking": RankingParams, "neighbours": NeighbourParams}
        expected = '{"rating": {...}, "ranking": {...}, "neighbours": {...}}'
        if not isinstance(data, dict):
            raise ModelError(f"{where}: expected {expected}")
        if data and not set(data) & set(parts) and set(data) <= set(RatingParams().as_dict()):
            data = {"rating": data}
        if set(data) - set(parts):
            unknown = ", ".join(sorted(set(data) - set(parts)))
            raise ModelError(f"{where}: expected {expected}, not the key(s) {unknown}")
        return cls(*(_from_dict(kind, data.get(name, {}), f"{where} {name}") for name, kind in parts.items()))


@dataclass(frozen=True)
class Scale:
    """The rating scale: lowest, highest and the step between allowed values."""

    low: float
    high: float
    step: float

    def clip(self, values):
        return np.clip(values, self.low, self.high)

    def allows(self, rating: float) -> bool:
        if not (self.low <= rating <= self.high):
            return False
        steps = (rating - self.low) / self.step
        return abs(steps - round(steps)) < 1e-9

    def describe(self) -> str:
        return f"{self.low:g} to {self.high:g} in steps of {self.step:g}"

    @classmethod
    def infer(cls, ratings: np.ndarray) -> Scale:
        """Half stars when any rating is fractional (ml-latest), whole stars otherwise (ml-100k)."""
        if ratings.size == 0:
            return cls(0.5, 5.0, 0.5)
        step = 1.0 if np.all(ratings == np.round(ratings)) else 0.5
        return cls(float(ratings.min()), float(ratings.max()), step)


class _Ids:
    """Sorted user and movie ids with their row lookups (shared by both models)."""

    user_ids: np.ndarray
    movie_ids: np.ndarray

    def user_row(self, user_id: int) -> int | None:
        """The user's row, or None.  A binary search on the sorted ids (a microsecond): a dict of 138,000 users
        took 35 ms a model to build, holding the GIL while a new version was swapped in under requests."""
        ids = self.user_ids
        row = int(np.searchsorted(ids, user_id))
        return row if row < len(ids) and ids[row] == user_id else None

    def movie_row(self, movie_id: int) -> int | None:
        row = int(self.movie_rows(np.array([movie_id]))[0])
        return row if row >= 0 else None

    def movie_rows(self, movie_ids: np.ndarray) -> np.ndarray:
        """Rows of ``movie_ids`` in the movie arrays, -1 where the model has not seen the movie."""
        return _rows(self.movie_ids, np.asarray(movie_ids, dtype=np.int64))

    @property
    def rank(self) -> int:
        return int(self.movie_factors.shape[1])


@dataclass
class RatingModel(_Ids):
    """Predicts stars: ``mu + b_user + b_movie + u . v``, indexed by sorted user and movie ids.

    ``u . v`` alone for plain ALS; a user or movie the model has not seen
    falls back to the baseline, so every pair gets a prediction.
    """

    mu: float
    user_ids: np.ndarray  # int64, sorted
    user_bias: np.ndarray
    user_factors: np.ndarray  # (users, rank); rows of users ALS did not see are zero
    movie_ids: np.ndarray  # int64, sorted
    movie_bias: np.ndarray
    movie_factors: np.ndarray  # (movies, rank)
    params: RatingParams
    scale: Scale

    def clip(self, values):
        return self.scale.clip(values)

    def _baseline(self, users, movies):
        upos = _rows(self.user_ids, np.asarray(users, dtype=np.int64))
        mpos = self.movie_rows(movies)
        bu = np.where(upos >= 0, self.user_bias[np.maximum(upos, 0)], 0.0)
        bi = np.where(mpos >= 0, self.movie_bias[np.maximum(mpos, 0)], 0.0)
        return self.mu + bu + bi, upos, mpos

    def predict_pairs(self, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
        """Predict many (user, movie) pairs at once; unseen ids fall back to the baseline."""
        baseline, upos, mpos = self._baseline(users, movies)
        both = (upos >= 0) & (mpos >= 0)
        dots = np.einsum("ij,ij->i", self.user_factors[np.maximum(upos, 0)],
                         self.movie_factors[np.maximum(mpos, 0)])
        return self.combine(baseline, dots, both)

    def combine(self, baseline, dots, has_factors, clip: bool = True, knn=None,
                blend: NeighbourParams | None = None):
        """The prediction rule, in one place: baseline plus factors (or factors alone for plain ALS);
        the baseline alone where the user or movie has no factors; with ``blend`` and the neighbourhood
        term ``knn``, ``baseline + intercept + als_weight * dots + knn_weight * knn``.  Clipped to the
        scale unless ``clip`` is false (for ranking, where clipping would tie the movies it cuts)."""
        if not self.params.bias:
            raw = np.where(has_factors, dots, baseline)
        elif blend is None or knn is None:
            raw = baseline + np.where(has_factors, dots, 0.0)
        else:
            raw = baseline + blend.intercept + blend.als_weight * np.where(has_factors, dots, 0.0) \
                + blend.knn_weight * knn
        return self.clip(raw) if clip else raw

    def fold_in(self, movie_rows: np.ndarray, ratings: np.ndarray) -> tuple[float, np.ndarray]:
        """Compute one user's bias and factor vector with the movie side held fixed.

        This is the ALS least-squares step for a single user, with the same
        count-scaled regularisation pyspark.mllib uses, so a new or changed
        user is served at once without retraining.  Rows < 0 (movies the model
        has not seen) only count towards the bias.
        """
        ratings = np.asarray(ratings, dtype=np.float64)
        known = movie_rows >= 0
        bi = np.where(known, self.movie_bias[np.maximum(movie_rows, 0)], 0.0)
        bias = float(np.sum(ratings - self.mu - bi) / (len(ratings) + self.params.user_damping))
        rows = movie_rows[known]
        if rows.size == 0:
            return bias, np.zeros(self.rank)
        V = self.movie_factors[rows]
        target = ratings[known]
        if self.params.bias:
            target = target - self.mu - bias - bi[known]
        A = V.T @ V + self.params.reg * rows.size * np.eye(self.rank)
        return bias, np.linalg.solve(A, V.T @ target)


@dataclass
class RankingModel(_Ids):
    """Scores how likely a user is to pick a movie: ``x_user . y_movie`` from implicit-feedback ALS.

    The scores only order movies; they are not stars.
    """

    user_ids: np.ndarray  # int64, sorted
    user_factors: np.ndarray  # (users, rank)
    movie_ids: np.ndarray  # int64, sorted
    movie_factors: np.ndarray  # (movies, rank)
    params: RankingParams

    def __post_init__(self) -> None:
        self.gram = self.movie_factors.T @ self.movie_factors  # Y^T Y, shared by every fold-in
        self._eigen: tuple[np.ndarray, np.ndarray] | None = None  # Y^T Y = Q diag(w) Q^T, made at the first use

    def fold_in(self, movie_rows: np.ndarray, ratings: np.ndarray) -> np.ndarray:
        """One user's factor vector with the movie side held fixed: the implicit-ALS user solve.

        Solves ``(Y^T Y + Y^T (C - I) Y + lambda * n I) x = Y^T C p`` exactly as
        pyspark.mllib does: confidence ``1 + alpha * |value|``, preference 1 for
        a positive value and 0 otherwise, ``n`` the number of positive values.
        Movies the model has not seen are ignored.  A user with fewer rated
        movies than half the rank (a new user's first ratings: most POSTs) is
        solved through :meth:`_low_rank_solve`, a few times cheaper, same result.
        """
        known = movie_rows >= 0
        ratings = np.asarray(ratings, dtype=np.float64)
        mean = ratings.mean() if len(ratings) else 0.0
        values = np.asarray(self.params.preferences(ratings, mean))[known]
        Y = self.movie_factors[movie_rows[known]]
        c1 = self.params.alpha * np.abs(values)
        positive = values > 0
        shift = self.params.reg * int(positive.sum())
        b = Y[positive].T @ (1.0 + c1[positive])
        weighted = c1 > 0
        if shift > 0 and 2 * int(weighted.sum()) < self.rank:
            return self._low_rank_solve(Y[weighted] * np.sqrt(c1[weighted])[:, None], shift, b)
        A = self.gram + (Y * c1[:, None]).T @ Y
        A[np.diag_indices_from(A)] += shift
        return np.linalg.solve(A, b)

    def _low_rank_solve(self, W: np.ndarray, shift: float, b: np.ndarray) -> np.ndarray:
        """``(Y^T Y + shift I + W^T W)^-1 b`` for a ``W`` of few rows (k), by the Woodbury identity: with
        ``M = Y^T Y + shift I = Q diag(w + shift) Q^T`` (one eigendecomposition per model),
        ``x = M^-1 b - M^-1 W^T (I + W M^-1 W^T)^-1 W M^-1 b``: a k x k solve instead of rank x rank."""
        if self._eigen is None:
            w, Q = np.linalg.eigh(self.gram.astype(np.float64))  # float64 whatever the factors' type
            self._eigen = (np.maximum(w, 0.0), Q)  # Y^T Y is positive semi-definite: rounding aside, w >= 0
        w, Q = self._eigen
        d = 1.0 / (w + shift)
        Z = W @ Q
        y = d * (b @ Q)
        S = (Z * d) @ Z.T
        S[np.diag_indices_from(S)] += 1.0
        y -= d * (_solve(S, Z @ y) @ Z)
        return Q @ y


def _solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.linalg.solve``, without its overhead for a 1 x 1 system (a user's first rating)."""
    return b / A[0, 0] if A.shape[0] == 1 else np.linalg.solve(A, b)


def neighbour_sums(neighbours: np.ndarray, similarity: np.ndarray, rows: np.ndarray, residuals: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """For one user and each of ``rows``: ``sum(s * x)`` and ``sum(s)`` over the ``k`` most similar
    positive neighbours the user rated.

    ``residuals`` holds the user's residual of every row, NaN where the user did not rate it, plus one
    NaN at the end that the -1 padding of ``neighbours`` (rows with fewer neighbours) points at.
    ``neighbours``/``similarity`` hold each row's neighbours most similar first.  The serving snapshot
    (catalogue rows) and the offline evaluation (model rows) share this; a request calls it for one
    row or a list's ten, so it is kept to few NumPy calls.
    """
    s = similarity[rows]
    x = residuals[neighbours[rows]]  # a new array: changed in place below, as each temporary is rows x L
    use = (s > 0) & (x == x)  # x == x: rated (not NaN)
    if k < use.shape[1]:
        use &= np.cumsum(use, axis=1, dtype=np.int32) <= k
    weights = np.where(use, s, 0.0)
    x[~use] = 0.0
    return np.multiply(weights, x, out=x).sum(axis=1), weights.sum(axis=1)


def user_residuals(n_rows: int, rated_rows: np.ndarray, ratings: np.ndarray, offset: float,
                   movie_bias: np.ndarray) -> np.ndarray:
    """One user's residuals ``rating - offset - movie_bias[row]`` (``offset``: mu plus the user's bias) as the
    vector ``neighbour_sums`` takes: ``n_rows`` entries, NaN where not rated, and the padding's NaN."""
    residuals = np.full(n_rows + 1, np.nan)
    residuals[rated_rows] = np.asarray(ratings, dtype=np.float64) - offset - movie_bias[rated_rows]
    return residuals


@dataclass
class NeighbourModel:
    """Each movie's most similar movies on the baseline residuals (see NeighbourParams), rows aligned
    with the rating model's ``movie_ids``; zero columns when the neighbourhood is off."""

    neighbours: np.ndarray  # (movies, L) int32 rows, most similar first, -1 padding
    similarity: np.ndarray  # (movies, L) float32, shrunk correlations
    params: NeighbourParams

    @classmethod
    def empty(cls, n_movies: int, params: NeighbourParams) -> NeighbourModel:
        return cls(np.zeros((n_movies, 0), np.int32), np.zeros((n_movies, 0), np.float32), params)

    @property
    def active(self) -> bool:
        return self.params.enabled and self.neighbours.shape[1] > 0


@dataclass
class Ingredients:
    """What one user's predictions are made of (unclipped), so each part can be scored on its own."""

    baseline: np.ndarray  # mu + b_user + b_movie
    dots: np.ndarray  # u . v, zero where the user or the movie has no factors
    has_factors: np.ndarray
    sx: np.ndarray  # neighbourhood sums (see neighbour_sums); zero without neighbours
    ss: np.ndarray


@dataclass
class Models:
    """The rating, ranking and neighbourhood models, trained together on the same ratings and saved as one."""

    rating: RatingModel
    ranking: RankingModel
    neighbours: NeighbourModel | None = None  # None: built empty (off) for the rating model's movies
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.neighbours is None:
            self.neighbours = NeighbourModel.empty(len(self.rating.movie_ids), NeighbourParams(enabled=False))

    @property
    def params(self) -> ModelParams:
        return ModelParams(self.rating.params, self.ranking.params, self.neighbours.params)

    @property
    def scale(self) -> Scale:
        return self.rating.scale

    @property
    def blend(self) -> NeighbourParams | None:
        """The blend's weights when predictions use the neighbourhood, else None."""
        return self.neighbours.params if self.neighbours.active and self.rating.params.bias else None

    def ingredients(self, user: int, movies: np.ndarray, rated_movies: np.ndarray,
                    rated_values: np.ndarray) -> Ingredients:
        """The parts of the predictions of ``movies`` for a user who rated ``rated_movies`` (ids) with
        ``rated_values``; unseen users and movies fall back to the baseline."""
        r = self.rating
        movies = np.asarray(movies, dtype=np.int64)
        baseline, upos, mpos = r._baseline(np.full(len(movies), user, dtype=np.int64), movies)
        has_factors = (upos >= 0) & (mpos >= 0)
        dots = np.zeros(len(movies))
        sx, ss = np.zeros(len(movies)), np.zeros(len(movies))
        if not len(movies) or upos[0] < 0:
            return Ingredients(baseline, dots, has_factors, sx, ss)
        dots = np.where(has_factors, r.movie_factors[np.maximum(mpos, 0)] @ r.user_factors[upos[0]], 0.0)
        if self.blend is not None:
            rows = r.movie_rows(rated_movies)
            known = rows >= 0
            residuals = user_residuals(len(r.movie_ids), rows[known], np.asarray(rated_values)[known],
                                       r.mu + r.user_bias[upos[0]], r.movie_bias)
            sx, ss = neighbour_sums(self.neighbours.neighbours, self.neighbours.similarity, np.maximum(mpos, 0),
                                    residuals, self.blend.k)
            sx, ss = np.where(mpos >= 0, sx, 0.0), np.where(mpos >= 0, ss, 0.0)
        return Ingredients(baseline, dots, has_factors, sx, ss)

    def compare(self, parts: Ingredients) -> dict[str, np.ndarray]:
        """Unclipped predictions by each part: the baseline, the rating model without the neighbourhood
        (``als``), the neighbourhood alone (baseline plus ``sum(s x) / sum(s)``, KNNBaseline's rule) and
        the blend the service predicts."""
        r, blend = self.rating, self.blend
        als = r.combine(parts.baseline, parts.dots, parts.has_factors, clip=False)
        mean = np.divide(parts.sx, parts.ss, out=np.zeros_like(parts.sx), where=parts.ss > 0)
        served = als if blend is None else r.combine(parts.baseline, parts.dots, parts.has_factors, clip=False,
                                                     knn=blend.knn(parts.sx, parts.ss), blend=blend)
        return {"baseline": parts.baseline, "als": als, "neighbourhood": parts.baseline + mean, "blend": served}


def _rows(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1)
