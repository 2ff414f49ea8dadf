"""Choosing a dataset's parameters on a validation split carved from its training ratings, within a budget.

The rating model's parameters differ per dataset (whole or half stars, how
many ratings a user gives), so a dataset without saved parameters is tuned on
its first training: a coordinate search from the current parameters over
lambda, rank, damping and iterations, each fit scored by RMSE on the
validation split, starting no new fit once the time budget is spent.  Then the
ranking model and the neighbourhood are fitted on the same split, and the
blend's weights are least squares on the validation pairs.  Test data is never
seen here: callers hand in training ratings only.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from model import (
    TUNE_BUDGET_SECONDS,
    Ingredients,
    ModelParams,
    Models,
    NeighbourParams,
    RatingModel,
    RatingParams,
    Scale,
)
from spark.training import collect_ratings, fit_neighbour_model, fit_ranking_model, fit_rating_model, packed, phase

log = logging.getLogger(__name__)

BUDGET_SECONDS = TUNE_BUDGET_SECONDS
VALIDATION_FRACTION = 0.1
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


def pair_ingredients(sc, models: Models, train_rdd, pairs_rdd):
    """An RDD with, per user, the actual ratings of ``pairs_rdd`` and the :class:`model.Ingredients` of
    their predictions, the neighbourhood made of the user's ratings in ``train_rdd``; and the broadcast to
    destroy when done."""
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
            yield actual, models.ingredients(user, movies, rated_movies, rated_values)

    keyed_train = train_rdd.map(lambda t: (t[0], (t[1], t[2])))
    keyed_pairs = pairs_rdd.map(lambda t: (t[0], (t[1], t[2])))
    return keyed_train.cogroup(keyed_pairs).mapPartitions(per_user), models_bc


def collect_ingredients(sc, models: Models, train_rdd, pairs_rdd) -> tuple[np.ndarray, Ingredients]:
    """Every pair's actual rating and prediction ingredients, concatenated in the driver."""
    rdd, models_bc = pair_ingredients(sc, models, train_rdd, pairs_rdd)
    try:
        rows = rdd.collect()
    finally:
        models_bc.destroy()
    if not rows:
        empty = np.zeros(0)
        return empty, Ingredients(empty, empty, empty.astype(bool), empty, empty)
    actual = np.concatenate([a for a, _ in rows])
    parts = Ingredients(*(np.concatenate([getattr(p, f) for _, p in rows])
                          for f in ("baseline", "dots", "has_factors", "sx", "ss")))
    return actual, parts


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


def fit_blend(actual: np.ndarray, parts: Ingredients, scale: Scale, base: NeighbourParams,
              supports=SUPPORTS) -> tuple[NeighbourParams, list[dict]]:
    """The blend's weights by least squares on validation pairs, for each ``support``; the one with the
    lowest validation RMSE (after clipping to the scale) is picked.  Returns the pick and the table."""
    target = actual - parts.baseline
    table, best, best_rmse = [], base, math.inf
    for support in supports:
        knn = replace(base, support=support).knn(parts.sx, parts.ss)
        features = np.column_stack([np.ones_like(parts.dots), parts.dots, knn])
        weights = np.linalg.lstsq(features, target, rcond=None)[0]
        predicted = scale.clip(parts.baseline + features @ weights)
        rmse = float(np.sqrt(np.mean((predicted - actual) ** 2)))
        intercept, als_weight, knn_weight = (round(float(w), 4) for w in weights)
        table.append({"support": support, "intercept": intercept, "als_weight": als_weight,
                      "knn_weight": knn_weight, "valid_rmse": round(rmse, 5)})
        if rmse < best_rmse:
            best_rmse = rmse
            best = replace(base, support=support, intercept=intercept, als_weight=als_weight, knn_weight=knn_weight)
    return best, table


@dataclass
class Search:
    """The coordinate search over the rating model's parameters, each candidate fitted once; the model
    with the lowest validation RMSE so far is kept (``best_model``), so the pick is not fitted again."""

    sc: object
    train: object  # the training part, as training.packed gives it
    valid: tuple[np.ndarray, np.ndarray, np.ndarray]  # users, movies, ratings
    scale: Scale
    deadline: float
    table: list[dict] = field(default_factory=list)
    scores: dict[RatingParams, float] = field(default_factory=dict)
    best_model: RatingModel | None = None

    def score(self, params: RatingParams) -> float:
        if params not in self.scores:
            start = time.perf_counter()
            model, _ = fit_rating_model(self.sc, self.train, params, self.scale)
            users, movies, actual = self.valid
            rmse = float(np.sqrt(np.mean((model.predict_pairs(users, movies) - actual) ** 2)))
            if not self.scores or rmse < min(self.scores.values()):
                self.best_model = model
            self.scores[params] = rmse
            self.table.append({**{k: getattr(params, k) for k in STEPS}, "valid_rmse": round(rmse, 5),
                               "seconds": round(time.perf_counter() - start, 2)})
            log.info("tuning: rank %d, lambda %g, %d iterations, damping %g/%g: validation RMSE %.5f",
                     params.rank, params.reg, params.iterations, params.user_damping, params.movie_damping, rmse)
        return self.scores[params]

    def time_left(self) -> bool:
        return time.perf_counter() < self.deadline

    def run(self, start: RatingParams) -> RatingParams:
        """Walk from ``start`` until no step improves or the budget is spent; the best candidate fitted."""
        best = start
        best_rmse = self.score(best)
        moved = True
        while moved and self.time_left():
            moved = False
            for name, steps in STEPS.items():
                for direction in (-1, 1):
                    while self.time_left():
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


def tune(sc, ratings, base: ModelParams, scale: Scale, budget: float = BUDGET_SECONDS,
         seed: int = 42) -> tuple[ModelParams, dict]:
    """Pick the rating model's parameters and the blend on a validation split of ``ratings`` (training
    ratings only); the ranking model keeps ``base``'s.  Returns the pick and a report of every trial."""
    start = time.perf_counter()
    train, valid = (r.cache() for r in ratings.randomSplit([1 - VALIDATION_FRACTION, VALIDATION_FRACTION], seed=seed))
    try:
        users, movies, values = collect_ratings(valid)
        with packed(train) as arrays:
            search = Search(sc, arrays, (users.astype(np.int64), movies.astype(np.int64),
                                         values.astype(np.float64)), scale, start + budget)
            with phase(f"tuning the rating model (budget {budget:g} s)"):
                rating_params = search.run(base.rating)
            neighbours, blend_table, parts_rmse = base.neighbours, [], {}
            if base.neighbours.enabled and rating_params.bias:
                with phase("tuning the blend"):
                    neighbours, blend_table, parts_rmse = _tune_blend(sc, arrays, train, valid, search.best_model,
                                                                      base, scale)
    finally:
        train.unpersist()
        valid.unpersist()
    chosen = ModelParams(rating_params, base.ranking, neighbours)
    report = {"table": search.table, "blend_table": blend_table, "valid_rmse": parts_rmse,
              "default_valid_rmse": search.scores[base.rating], "chosen": chosen.as_dict(),
              "budget_seconds": budget, "seconds": round(time.perf_counter() - start, 1),
              "n_valid": int(len(values))}
    log.info("tuned in %.0f s (%d fits): rank %d, lambda %g, %d iterations, damping %g/%g; validation RMSE %.5f "
             "(the starting parameters %.5f)%s", report["seconds"], len(search.table), rating_params.rank,
             rating_params.reg, rating_params.iterations, rating_params.user_damping, rating_params.movie_damping,
             search.scores[rating_params], search.scores[base.rating],
             f"; blended with the neighbourhood {parts_rmse.get('blend', float('nan')):.5f}" if parts_rmse else "")
    return chosen, report


def _tune_blend(sc, arrays, train, valid, rating: RatingModel, base: ModelParams, scale: Scale):
    ranking = fit_ranking_model(sc, arrays, base.ranking, rating.user_ids, rating.movie_ids)
    neighbours = fit_neighbour_model(sc, arrays, rating, ranking, base.neighbours)
    models = Models(rating, ranking, neighbours)
    actual, parts = collect_ingredients(sc, models, train, valid)
    pick, table = fit_blend(actual, parts, scale, base.neighbours)
    models.neighbours = replace(neighbours, params=pick)
    rmse = {name: row["rmse"] for name, row in part_table(part_errors(models, actual, parts)).items()}
    return pick, table, rmse
