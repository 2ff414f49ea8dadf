"""Choosing a dataset's parameters on a validation split carved from its training ratings.

The rating model's parameters differ per dataset (whole or half stars, how
many ratings a user gives), so a dataset without saved parameters is tuned on
its first training: a coordinate search from the current parameters over
lambda, rank, damping and iterations.  Each candidate is scored as it would be
served: the rating model, its neighbourhood and the blend's weights, the
weights judged out of sample (fitted on one half of the validation pairs,
scored on the other, both ways).  The search is budgeted in fits, and the
split, ALS's blocks and the order of the validation pairs depend on the data
and the seed only, so the same ratings give the same pick on any machine; a
time cap is only a safety net, reported when it stops the search.  Test data
is never seen here: callers hand in training ratings only.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from model import (
    Ingredients,
    ModelParams,
    Models,
    NeighbourParams,
    RankingModel,
    RatingModel,
    RatingParams,
    Scale,
    TuneBudget,
)
from spark.training import fit_neighbour_model, fit_ranking_model, fit_rating_model, packed, phase

log = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.1
BLOCKS = 4  # ALS's blocks while tuning, whatever the cores: each block draws its own starting factors
# Each parameter's values, in order; the search steps to a neighbouring value while validation RMSE improves.
STEPS = {
    "reg": (0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5),
    "rank": (4, 8, 12, 16, 24, 32, 48, 64, 96, 128),
    "movie_damping": (0.0, 2.0, 5.0, 10.0, 25.0, 50.0),
    "user_damping": (0.0, 2.0, 5.0, 10.0, 25.0),
    "iterations": (5, 10, 15, 20, 30),
}
SUPPORTS = (0.25, 0.5, 1.0, 2.0, 4.0)
IMPROVEMENT = 1e-4  # a step must lower validation RMSE by this much to be taken
_MASK = (1 << 64) - 1


def pair_unit(users, movies, seed: int) -> np.ndarray:
    """A number in [0, 1) for each (user, movie) pair that depends on the pair and the seed only (splitmix64),
    so a split made with it is the same however the ratings are partitioned."""
    users = np.asarray(users, dtype=np.int64).astype(np.uint64)
    movies = np.asarray(movies, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = users * np.uint64(0x9E3779B97F4A7C15) + movies * np.uint64(0xC2B2AE3D27D4EB4F) \
            + np.uint64(seed & _MASK)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_pairs(ratings, fraction: float, seed: int):
    """(rest, part): ``part`` holds the ratings whose ``pair_unit`` is below ``fraction`` (about that share)."""
    def side(rows, held: bool):
        rows = list(rows)
        if not rows:
            return []
        units = pair_unit([r[0] for r in rows], [r[1] for r in rows], seed)
        return [row for row, unit in zip(rows, units.tolist()) if (unit < fraction) == held]

    return (ratings.mapPartitions(lambda rows: side(rows, False)),
            ratings.mapPartitions(lambda rows: side(rows, True)))


def pair_ingredients(sc, models: Models, train_rdd, pairs_rdd):
    """An RDD with, per user, the movies and actual ratings of the user's pairs in ``pairs_rdd`` and the
    :class:`model.Ingredients` of their predictions, the neighbourhood made of the user's ratings in
    ``train_rdd``; and the broadcast to destroy when done."""
    models_bc = sc.broadcast(models)

    def per_user(rows):
        models = models_bc.value
        for user, (rated, pairs) in rows:
            pairs, rated = list(pairs), list(rated)
            if not pairs:
                continue
            movies = np.array([m for m, _ in pairs], dtype=np.int64)
            actual = np.array([r for _, r in pairs], dtype=np.float64)
            rated_movies = np.array([m for m, _ in rated], dtype=np.int64)
            rated_values = np.array([r for _, r in rated], dtype=np.float64)
            yield user, movies, actual, models.ingredients(user, movies, rated_movies, rated_values)

    keyed_train = train_rdd.map(lambda t: (t[0], (t[1], t[2])))
    keyed_pairs = pairs_rdd.map(lambda t: (t[0], (t[1], t[2])))
    return keyed_train.cogroup(keyed_pairs).mapPartitions(per_user), models_bc


INGREDIENTS = ("baseline", "dots", "has_factors", "sx", "ss")


@dataclass
class Pairs:
    """Validation pairs in the driver, ordered by (user, movie) whatever the partitioning: who, the actual
    rating and the ingredients of the prediction."""

    users: np.ndarray
    movies: np.ndarray
    actual: np.ndarray
    parts: Ingredients

    def folds(self, seed: int) -> np.ndarray:
        """0 or 1 per pair, from the pair and the seed only: the halves the blend's weights are judged on."""
        return (pair_unit(self.users, self.movies, seed + 1) < 0.5).astype(np.int8)


def collect_ingredients(sc, models: Models, train_rdd, pairs_rdd) -> Pairs:
    """Every pair's actual rating and prediction ingredients, concatenated in the driver."""
    rdd, models_bc = pair_ingredients(sc, models, train_rdd, pairs_rdd)
    try:
        rows = rdd.collect()
    finally:
        models_bc.destroy()
    users = np.concatenate([np.full(len(m), u, dtype=np.int64) for u, m, _, _ in rows] or [np.zeros(0, np.int64)])
    movies = np.concatenate([m for _, m, _, _ in rows] or [np.zeros(0, np.int64)])
    order = np.lexsort((movies, users))
    actual = np.concatenate([a for _, _, a, _ in rows] or [np.zeros(0)])[order]
    parts = Ingredients(*(np.concatenate([getattr(p, f) for *_, p in rows] or [np.zeros(0)])[order]
                          for f in INGREDIENTS))
    return Pairs(users[order], movies[order], actual, parts)


PARTS = ("baseline", "als", "neighbourhood", "blend")  # what Models.compare gives, in this order


def part_errors(models: Models, actual: np.ndarray, parts: Ingredients) -> np.ndarray:
    """For each of PARTS: pairs, pairs predicted (finite), and the sums of squared and absolute errors of
    the predictions clipped to the scale, as a (parts, 4) array that adds up over users."""
    out = []
    for predicted in models.compare(parts).values():
        finite = np.isfinite(predicted)
        err = np.where(finite, models.rating.clip(predicted) - actual, 0.0)
        out.append([len(actual), finite.sum(), err @ err, np.abs(err).sum()])
    return np.array(out, dtype=np.float64)


def part_table(totals: np.ndarray) -> dict[str, dict]:
    """RMSE, MAE and coverage of each part from ``part_errors`` totals."""
    table = {}
    for name, (n, predicted, sq, ab) in zip(PARTS, totals.tolist()):
        table[name] = {"rmse": round(math.sqrt(sq / predicted), 5) if predicted else float("nan"),
                       "mae": round(ab / predicted, 5) if predicted else float("nan"),
                       "coverage": predicted / n if n else 0.0}
    return table


def _rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - actual) ** 2))) if len(actual) else math.nan


def fit_blend(actual: np.ndarray, parts: Ingredients, scale: Scale, base: NeighbourParams, folds: np.ndarray,
              supports=SUPPORTS) -> tuple[NeighbourParams, list[dict]]:
    """The blend's weights by least squares on the validation pairs, for each ``support``, judged out of
    sample: weights fitted on the pairs of one fold (0 or 1 in ``folds``) predict the other fold's, both
    ways, and the support with the lowest such RMSE (clipped to the scale) wins.  The weights kept are
    fitted on all the pairs.  Returns the pick and the table (``valid_rmse`` out of sample, and the
    weights' ``in_sample_rmse``)."""
    target = actual - parts.baseline
    table, best, best_rmse = [], base, math.inf
    for support in supports:
        knn = replace(base, support=support).knn(parts.sx, parts.ss)
        features = np.column_stack([np.ones_like(parts.dots), parts.dots, knn])
        held_out = np.zeros_like(target)
        for fold in (0, 1):
            fit = folds == fold
            if fit.any():
                held_out[~fit] = features[~fit] @ np.linalg.lstsq(features[fit], target[fit], rcond=None)[0]
        rmse = _rmse(scale.clip(parts.baseline + held_out), actual)
        weights = np.linalg.lstsq(features, target, rcond=None)[0]
        intercept, als_weight, knn_weight = (round(float(w), 4) for w in weights)
        table.append({"support": support, "intercept": intercept, "als_weight": als_weight,
                      "knn_weight": knn_weight, "valid_rmse": round(rmse, 5),
                      "in_sample_rmse": round(_rmse(scale.clip(parts.baseline + features @ weights), actual), 5)})
        if rmse < best_rmse:
            best_rmse = rmse
            best = replace(base, support=support, intercept=intercept, als_weight=als_weight, knn_weight=knn_weight)
    return best, table


@dataclass
class Search:
    """The coordinate search: from a start, step each parameter to its neighbouring value while the
    score (validation RMSE) improves by ``IMPROVEMENT``, each candidate scored once.  It starts no new
    fit once ``fits`` candidates are scored, or (the safety net) after ``deadline``; ``capped`` then says
    the time cap stopped it."""

    fits: int
    deadline: float
    scores: dict[RatingParams, float] = field(default_factory=dict)
    capped: bool = False

    def score(self, params: RatingParams) -> float:
        raise NotImplementedError

    def may_fit(self) -> bool:
        if len(self.scores) >= self.fits:
            return False
        if time.perf_counter() >= self.deadline:
            self.capped = True
            return False
        return True

    def run(self, start: RatingParams) -> RatingParams:
        """Walk from ``start`` until no step improves or the budget is spent; the best candidate scored."""
        best = start
        best_rmse = self.score(best)
        moved = True
        while moved and self.may_fit():
            moved = False
            for name, steps in STEPS.items():
                for direction in (-1, 1):
                    while self.may_fit():
                        value = _step(steps, getattr(best, name), direction)
                        if value is None:
                            break
                        candidate = replace(best, **{name: value})
                        rmse = self.score(candidate)
                        if rmse > best_rmse - IMPROVEMENT:
                            break
                        best, best_rmse, moved = candidate, rmse, True
        return min(self.scores, key=self.scores.get)


def _step(steps: tuple, value, direction: int):
    """The value next to ``value`` in ``steps`` in ``direction`` (the nearest one if ``value`` is not a step)."""
    if direction < 0:
        below = [s for s in steps if s < value]
        return below[-1] if below else None
    above = [s for s in steps if s > value]
    return above[0] if above else None


@dataclass
class Trial:
    """One candidate as it would be served: its models (blend picked), the validation pairs' ingredients
    and the blend's table."""

    models: Models
    pairs: Pairs
    blend_table: list[dict]
    rmse: float


@dataclass
class ServedSearch(Search):
    """The search with each candidate fitted and scored as served: the rating model, then (when the
    neighbourhood is on) the neighbourhood from the ranking model fitted once, and the blend judged out
    of sample; without a neighbourhood, the rating model's clipped validation RMSE.  The best trial is
    kept, so the pick is not fitted again."""

    sc: object = None
    arrays: object = None  # the training part, as training.packed gives it
    train: object = None  # the training part's RDD (users' neighbourhoods)
    valid: object = None  # the validation part's RDD
    base: ModelParams = field(default_factory=ModelParams)
    scale: Scale | None = None
    seed: int = 42
    table: list[dict] = field(default_factory=list)
    best: Trial | None = None
    ranking: RankingModel | None = None

    def score(self, params: RatingParams) -> float:
        if params in self.scores:
            return self.scores[params]
        start = time.perf_counter()
        trial = self._fit(params)
        if self.best is None or trial.rmse < self.best.rmse:
            self.best = trial
        self.scores[params] = trial.rmse
        blend = trial.models.blend
        self.table.append({**{k: getattr(params, k) for k in STEPS}, "valid_rmse": round(trial.rmse, 5),
                           **({"support": blend.support} if blend else {}),
                           "seconds": round(time.perf_counter() - start, 2)})
        log.info("tuning: rank %d, lambda %g, %d iterations, damping %g/%g: validation RMSE %.5f as served",
                 params.rank, params.reg, params.iterations, params.user_damping, params.movie_damping, trial.rmse)
        return trial.rmse

    def _fit(self, params: RatingParams) -> Trial:
        sc, base = self.sc, self.base
        rating, _ = fit_rating_model(sc, self.arrays, params, self.scale, blocks=BLOCKS)
        ranking = self._ranking(rating)
        served = base.neighbours.enabled and params.bias  # else the rating model alone is served
        neighbours = fit_neighbour_model(sc, self.arrays, rating, ranking, base.neighbours) if served else None
        models = Models(rating, ranking, neighbours)
        pairs = collect_ingredients(sc, models, self.train, self.valid)
        if not served:
            rmse = _rmse(rating.clip(models.compare(pairs.parts)["blend"]), pairs.actual)
            return Trial(models, pairs, [], rmse)
        pick, table = fit_blend(pairs.actual, pairs.parts, self.scale, base.neighbours, pairs.folds(self.seed))
        models.neighbours = replace(neighbours, params=pick)
        rmse = next(row["valid_rmse"] for row in table if row["support"] == pick.support)
        return Trial(models, pairs, table, rmse)

    def _ranking(self, rating: RatingModel) -> RankingModel:
        """The ranking model (its parameters are not searched): fitted once, on the first candidate's ids."""
        if self.ranking is None:
            self.ranking = fit_ranking_model(self.sc, self.arrays, self.base.ranking, rating.user_ids,
                                             rating.movie_ids, blocks=BLOCKS)
        return self.ranking


def tune(sc, ratings, base: ModelParams, scale: Scale, budget: TuneBudget = TuneBudget(),
         seed: int = 42) -> tuple[ModelParams, dict]:
    """Pick the rating model's parameters and the blend on a validation split of ``ratings`` (training
    ratings only), each candidate scored as served; the ranking model keeps ``base``'s.  Returns the pick
    and a report of every trial."""
    start = time.perf_counter()
    train, valid = (r.cache() for r in split_pairs(ratings, VALIDATION_FRACTION, seed))
    try:
        with packed(train) as arrays:
            search = ServedSearch(budget.fits, start + budget.seconds, sc=sc, arrays=arrays, train=train,
                                  valid=valid, base=base, scale=scale, seed=seed)
            with phase(f"tuning ({budget.fits} fits at most)"):
                rating_params = search.run(base.rating)
        best = search.best
        n_valid = valid.count()
    finally:
        train.unpersist()
        valid.unpersist()
    chosen = ModelParams(rating_params, base.ranking, best.models.neighbours.params)
    parts_rmse = {name: row["rmse"] for name, row in
                  part_table(part_errors(best.models, best.pairs.actual, best.pairs.parts)).items()}
    report = {"table": search.table, "blend_table": best.blend_table, "valid_rmse": parts_rmse,
              "served_valid_rmse": search.scores[rating_params], "default_valid_rmse": search.scores[base.rating],
              "chosen": chosen.as_dict(), "fits": len(search.table), "budget": {"fits": budget.fits,
                                                                               "seconds": budget.seconds},
              "time_cap_hit": search.capped, "seconds": round(time.perf_counter() - start, 1),
              "n_valid": int(n_valid), "split": {"seed": seed, "validation_fraction": VALIDATION_FRACTION},
              "blocks": BLOCKS}
    if search.capped:
        log.warning("tuning: the time cap (%g s) stopped the search after %d of %d fits; the pick may differ "
                    "on another machine", budget.seconds, len(search.table), budget.fits)
    log.info("tuned in %.0f s (%d fits): rank %d, lambda %g, %d iterations, damping %g/%g; validation RMSE as "
             "served %.5f out of sample (the starting parameters %.5f)", report["seconds"], len(search.table),
             rating_params.rank, rating_params.reg, rating_params.iterations, rating_params.user_damping,
             rating_params.movie_damping, search.scores[rating_params], search.scores[base.rating])
    return chosen, report
