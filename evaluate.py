"""Offline evaluation: honest RMSE over every test pair, and the quality of the lists as served.

    python evaluate.py --dataset datasets/ml-latest-small --json
    python evaluate.py --train train.csv --test test.csv --json [--recs-out recs.csv]
    python evaluate.py --dataset datasets/ml-latest-small --tune [--save]
    python evaluate.py --dataset datasets/ml-latest-small --json --diversify 0,0.2,0.5

Every test pair gets a predicted rating (unseen users and movies fall back to
the baseline), so ``coverage`` is the fraction of test pairs predicted and must
be 1.0; RMSE and MAE are those of the rating as served (ALS blended with the
neighbourhood of the user's training ratings), and of each part on its own,
printed as a table before the JSON.  Parameters come from the model flags, a
file named with ``--params``, or tuning as the service tunes a new dataset, on
the training part only (``--no-tune``: the defaults); a saved params.json is
never read unless named, as the service picked it on ratings the test part
holds.  The result says where its parameters came from and what the split was.
The top-10 lists are made by the service's own code (serving.Snapshot: the
candidates are the movies the user did not rate in training with at least
``--min-count`` training ratings), and so is a most-popular list from the same
candidates; both are scored against the test ratings >= 4 as MLlib's ``RankingMetrics`` scores lists.
``--diversify`` also scores the lists re-ranked at each strength as the service re-ranks them
(serving.diversity), with their intra-list diversity and genres.  The last line printed with ``--json`` is one
JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from itertools import product
from pathlib import Path

import numpy as np

from datasets import movielens
from model import (
    CONFIDENCES,
    ModelError,
    ModelParams,
    Models,
    RankingModel,
    RankingParams,
    RatingParams,
    Scale,
    TuneBudget,
)
from serving.diversity import distinct_genres, intra_list_diversity, pool_size, rerank
from serving.snapshot import Snapshot, candidates, top_k
from spark import tuning
from spark.training import fit_models, fit_ranking_model, fit_rating_model, infer_scale, packed
from spark.tuning import PARTS, pair_ingredients, part_errors, part_table

log = logging.getLogger("evaluate")

RELEVANT = 4.0
TOP_K = 10
MIN_COUNT = 25  # the service's default
# The ranking grid: mllib scales lambda by each user's/movie's count and applies alpha inside, so its
# best settings are its own (wide ranks, small alpha); the defaults won on ml-latest-small.
TUNE_RANKING = {"rank": (64, 128, 200), "reg": (0.05, 0.1, 0.2), "alpha": (0.1, 0.3, 1.0),
                "confidence": ("binary", "signed")}
TUNE_BLENDS = (0.0, 0.25, 0.5, 1.0)


def rating_metrics(sc, models: Models, train_rdd, test_rdd) -> dict:
    """RMSE, MAE and coverage of the predicted ratings over every pair of ``test_rdd`` (users'
    neighbourhoods from their ``train_rdd`` ratings), and the same for each part in ``models``:
    the baseline, ALS, the neighbourhood alone and the blend the service predicts.

    Sums of squared and absolute errors in one pass (mllib's RegressionMetrics
    would build a deprecated SQLContext just for this).
    """
    rdd, models_bc = pair_ingredients(sc, models, train_rdd, test_rdd)
    try:
        totals = rdd.map(lambda row: part_errors(models_bc.value, row[2], row[3])).fold(np.zeros((len(PARTS), 4)),
                                                                             lambda a, b: a + b)
    finally:
        models_bc.destroy()
    table = part_table(totals)
    served = table["blend"]
    return {"rmse": served["rmse"], "mae": served["mae"], "coverage": served["coverage"],
            "baseline_rmse": table["baseline"]["rmse"], "models": table}


def comparison(result: dict) -> str:
    """The comparison table of the parts' accuracy on the split, as printed before the JSON."""
    lines = [f"{'model':<14} {'rmse':>8} {'mae':>8} {'coverage':>9}"]
    for name, row in result["models"].items():
        lines.append(f"{name:<14} {row['rmse']:>8.5f} {row['mae']:>8.5f} {row['coverage']:>9.3f}")
    return "\n".join(lines)


def _shown(snapshot: Snapshot, counts: np.ndarray, min_count: int, seen) -> np.ndarray:
    """The candidate rows of a user who rated the movie ids ``seen`` in training."""
    seen_rows = np.searchsorted(snapshot.movie_ids, np.fromiter(seen, dtype=np.int64))
    return candidates(counts, min_count, seen_rows)


def _lists_partition(state_bc, k: int, min_count: int):
    """For each (user, (train movies, relevant test movies)) yield the served and the popular top-k."""
    def lists(rows):
        snapshot, counts = state_bc.value[:2]
        for user, (seen, relevant) in rows:
            shown = _shown(snapshot, counts, min_count, seen)
            served, _ = snapshot.top_n(snapshot.user_vectors(user), shown, k, counts)
            popular = top_k(counts, shown, k)
            yield (user, snapshot.movie_ids[served].tolist(), snapshot.movie_ids[popular].tolist(),
                   sorted(relevant or ()))
    return lists


def _user_movies(train_rdd, test_rdd):
    """(user, (training movies, relevant test movies or None)) for every training user."""
    seen = train_rdd.map(lambda t: (t[0], t[1])).groupByKey()
    relevant = test_rdd.filter(lambda t: t[2] >= RELEVANT).map(lambda t: (t[0], t[1])).groupByKey()
    return seen.leftOuterJoin(relevant)


def served_lists(sc, models: Models, train_rdd, test_rdd, k: int = TOP_K, min_count: int = MIN_COUNT,
                 genres: dict[int, tuple[str, ...]] | None = None):
    """An RDD of (user, served top-k, most-popular top-k, relevant test movies) for every training user, and
    the broadcast state it reads: (snapshot, counts, each catalogue row's genres from ``genres`` or None).

    The served list is what the service answers for the user with the models
    trained on ``train_rdd`` (same code: serving.Snapshot); counts for
    ``min_count`` and popularity are the training ratings'.
    """
    snapshot = Snapshot.build(models, models.rating.movie_ids)
    counts_by_id = dict(train_rdd.map(lambda t: (t[1], 1)).reduceByKey(lambda a, b: a + b).collect())
    counts = np.array([counts_by_id.get(int(m), 0) for m in snapshot.movie_ids], dtype=np.int64)
    row_genres = None if genres is None else [genres.get(int(m), ()) for m in snapshot.movie_ids]
    state = sc.broadcast((snapshot, counts, row_genres))
    return _user_movies(train_rdd, test_rdd).mapPartitions(_lists_partition(state, k, min_count)), state


def _diverse_partition(state_bc, k: int, min_count: int, strengths: Sequence[float]):
    """For each (user, (train movies, relevant test movies)) yield (user, [(list, intra-list distance, distinct
    genres) per strength], relevant): each list the ``k`` of the ``pool_size`` best re-ranked by ``rerank``, as the
    service answers ``diversify``."""
    def lists(rows):
        snapshot, counts, genres = state_bc.value
        unit = snapshot.rank_unit
        for user, (seen, relevant) in rows:
            shown = _shown(snapshot, counts, min_count, seen)
            vectors = snapshot.user_vectors(user)
            per_strength = []
            for strength in strengths:
                pool, scores = snapshot.top_n(vectors, shown, pool_size(k, strength), counts)
                chosen, _ = rerank(unit, pool, scores, k, strength)
                per_strength.append((snapshot.movie_ids[chosen].tolist(), intra_list_diversity(unit, chosen),
                                     distinct_genres(genres, chosen)))
            yield user, per_strength, sorted(relevant or ())
    return lists


def diversity_metrics(state, train_rdd, test_rdd, strengths: Sequence[float], n_movies: int, k: int = TOP_K,
                      min_count: int = MIN_COUNT) -> list[dict]:
    """Per strength (0 first, the reference, added when missing): precision, recall and NDCG at ``k`` as
    :func:`ranking_metrics` scores the served lists, catalogue coverage, and the mean intra-list distance (cosine
    distance over the ranking model's unit factors) and distinct genres of every training user's list; and the
    change of NDCG against strength 0 in percent.  ``state``: :func:`served_lists`' broadcast, with genres."""
    strengths = [0.0, *(s for s in strengths if s != 0)]
    lists = _user_movies(train_rdd, test_rdd).mapPartitions(_diverse_partition(state, k, min_count, strengths))
    lists = lists.cache()

    def sums_of(t) -> np.ndarray:
        """Per strength: judged, precision, recall, NDCG (for a user with liked test movies), listed, distance,
        genres."""
        _, per_strength, liked = t
        out = np.zeros((len(strengths), 7))
        for i, (served, distance, genres) in enumerate(per_strength):
            if liked:
                out[i, :4] = (1.0, *list_scores(served, liked, k))
            out[i, 4:] = (1.0, distance, genres)
        return out

    sums = lists.map(sums_of).fold(np.zeros((len(strengths), 7)), lambda a, b: a + b)
    shown = lists.flatMap(lambda t: [(i, m) for i, (served, _, _) in enumerate(t[1]) for m in served]) \
        .distinct().countByKey()
    lists.unpersist()
    table, reference = [], None
    for i, strength in enumerate(strengths):
        judged, precision, recall, ndcg, listed, distance, genres = sums[i]
        precision, recall, ndcg = (x / judged if judged else 0.0 for x in (precision, recall, ndcg))
        distance, genres = (x / listed if listed else 0.0 for x in (distance, genres))
        reference = ndcg if reference is None else reference
        table.append({"strength": strength, f"precision_at_{k}": round(float(precision), 5),
                      f"recall_at_{k}": round(float(recall), 5), f"ndcg_at_{k}": round(float(ndcg), 5),
                      "catalog_coverage": round(shown.get(i, 0) / n_movies, 5) if n_movies else 0.0,
                      "intra_list_distance": round(float(distance), 5), "distinct_genres": round(float(genres), 3),
                      "ndcg_change_pct": round(float(100 * (ndcg - reference) / reference), 2) if reference else 0.0})
    return table


def diversity_table(rows: list[dict], k: int = TOP_K) -> str:
    """The diversity table as printed before the JSON."""
    lines = [f"{'diversify':>9} {f'ndcg@{k}':>8} {'change':>8} {'distance':>9} {'genres':>7} {'coverage':>9}"]
    for r in rows:
        lines.append(f"{r['strength']:>9g} {r[f'ndcg_at_{k}']:>8.4f} {r['ndcg_change_pct']:>+7.2f}% "
                     f"{r['intra_list_distance']:>9.4f} {r['distinct_genres']:>7.2f} {r['catalog_coverage']:>9.4f}")
    return "\n".join(lines)


def list_scores(served: list, liked: list, k: int = TOP_K) -> tuple[float, float, float]:
    """Precision, recall and NDCG at ``k`` of one ranked list against the set of liked movies, by the
    definitions of MLlib's ``RankingMetrics`` (precision divides by ``k``; NDCG's ideal list has the liked
    movies first, and runs to ``min(max(len(served), len(liked)), k)``)."""
    liked = set(liked)
    hits = [movie in liked for movie in served[:k]]
    n = min(max(len(served), len(liked)), k)
    dcg = sum(1.0 / np.log(i + 2) for i, hit in enumerate(hits) if hit)
    ideal = sum(1.0 / np.log(i + 2) for i in range(min(len(liked), n)))
    return sum(hits) / k, sum(hits) / len(liked), dcg / ideal


def ranking_metrics(lists, n_movies: int, k: int = TOP_K) -> dict:
    """Precision, recall and NDCG at k (as MLlib's ``RankingMetrics`` defines them; computed here in one
    pass, which spares the Spark SQL start-up RankingMetrics costs: about 5 s a process) of the served and
    the popular lists, averaged over the users with liked test movies, and catalogue coverage (distinct
    movies in all served lists / ``n_movies``)."""
    lists = lists.cache()
    sums = lists.filter(lambda t: t[3]).map(
        lambda t: np.array([1.0, *list_scores(t[1], t[3], k), *list_scores(t[2], t[3], k)])).fold(
        np.zeros(7), lambda a, b: a + b)
    judged = int(sums[0])
    means = sums[1:] / judged if judged else np.zeros(6)
    result = {}
    for prefix, i in (("", 1), ("popularity_", 2)):
        shown = lists.flatMap(lambda t, i=i: t[i]).distinct().count()
        at = 0 if i == 1 else 3
        result.update({f"{prefix}precision_at_{k}": round(float(means[at]), 5),
                       f"{prefix}recall_at_{k}": round(float(means[at + 1]), 5),
                       f"{prefix}ndcg_at_{k}": round(float(means[at + 2]), 5),
                       f"{prefix}catalog_coverage": round(shown / n_movies, 5) if n_movies else 0.0})
    result["ranked_users"] = judged
    if result[f"popularity_ndcg_at_{k}"]:
        result["ndcg_vs_popularity"] = round(result[f"ndcg_at_{k}"] / result[f"popularity_ndcg_at_{k}"], 3)
    lists.unpersist()
    return result


def write_recs(lists, path: Path) -> int:
    """Write every user's served list as CSV ``userId,movieId,rank`` (rank 1 best); return the rows written."""
    rows = sorted((user, served) for user, served, _, _ in lists.collect())
    written = 0
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["userId", "movieId", "rank"])
        for user, served in rows:
            for rank, movie in enumerate(served, start=1):
                out.writerow([user, movie, rank])
                written += 1
    return written


def evaluate(sc, train_rdd, test_rdd, params: ModelParams, scale: Scale | None = None,
             ranking: bool = True, min_count: int = MIN_COUNT, recs_out: Path | None = None,
             tune_budget: TuneBudget | None = None, diversify: Sequence[float] = (),
             genres: dict[int, tuple[str, ...]] | None = None) -> dict:
    """Train the models on ``train_rdd`` and measure them on ``test_rdd``.

    With ``tune_budget``, the parameters are first tuned as the
    service tunes them, on a validation split carved from ``train_rdd``: the
    test split is never seen before the final measurement.  Ratings: every
    test pair.  Lists (``ranking``): the served top-10 of every training user,
    and the most-popular list from the same candidates; with ``diversify``
    (strengths), ``result["diversity"]`` scores the lists re-ranked at each
    (:func:`diversity_metrics`; ``genres`` by movie id, from the movies file).
    """
    train_rdd = train_rdd.cache()
    test_rdd = test_rdd.cache()
    n_train, n_test = train_rdd.count(), test_rdd.count()
    if n_train == 0 or n_test == 0:
        raise movielens.DatasetError(f"need ratings on both sides: {n_train} train, {n_test} test")
    scale = scale or infer_scale(train_rdd)
    tuned = None
    if tune_budget is not None:
        params, report = tuning.tune(sc, train_rdd, params, scale, tune_budget)
        tuned = {k: report[k] for k in ("seconds", "fits", "budget", "time_cap_hit", "served_valid_rmse",
                                        "default_valid_rmse", "valid_rmse", "n_valid", "split")}
    models = fit_models(sc, train_rdd, params, scale)
    result = rating_metrics(sc, models, train_rdd, test_rdd)
    if tuned:
        result["tuned"] = tuned
    if ranking:
        lists, state = served_lists(sc, models, train_rdd, test_rdd, TOP_K, min_count,
                                    genres if diversify else None)
        n_movies = train_rdd.map(lambda t: t[1]).union(test_rdd.map(lambda t: t[1])).distinct().count()
        result.update(ranking_metrics(lists, n_movies))
        if recs_out is not None:
            result["recs_written"] = write_recs(lists, recs_out)
        if diversify:
            result["diversity"] = diversity_metrics(state, train_rdd, test_rdd, diversify, n_movies, TOP_K,
                                                    min_count)
        state.destroy()
    result.update({
        "n_train": n_train,
        "n_test": n_test,
        "min_count": min_count,
        "fit_seconds": models.meta["fit_seconds"],
        "params": params.as_dict(),
        "scale": scale.__dict__,
    })
    train_rdd.unpersist()
    test_rdd.unpersist()
    return result


def _grid(space: dict) -> list[dict]:
    return [dict(zip(space, values)) for values in product(*space.values())]


def tune(sc, ratings, base: ModelParams, seed: int, budget: TuneBudget = TuneBudget(),
         ranking_space: dict | None = None, blends=TUNE_BLENDS, out=sys.stdout) -> dict:
    """Pick every model's parameters on validation data (60/20/20), then report the pick on the test split.

    The rating model and the rating blend as the service tunes them
    (tuning.tune, on a validation split of the 60% part, within ``budget``);
    the ranking model by validation NDCG@10 of the lists as served
    (on the 20% validation part), over ``ranking_space`` and then over the
    blend weights.
    """
    train_rdd, valid_rdd, test_rdd = (r.cache() for r in ratings.randomSplit([0.6, 0.2, 0.2], seed=seed))
    scale = infer_scale(train_rdd)
    ranking_space = TUNE_RANKING if ranking_space is None else ranking_space

    picked, report = tuning.tune(sc, train_rdd, base, scale, budget, seed)
    table = report["table"]
    print(f"{'rank':>5} {'lambda':>7} {'iter':>5} {'damping':>9} {'valid_rmse':>11} {'seconds':>8}", file=out)
    for row in table:
        damping = f"{row['user_damping']:g}/{row['movie_damping']:g}"
        print(f"{row['rank']:>5} {row['reg']:>7g} {row['iterations']:>5} {damping:>9} {row['valid_rmse']:>11.5f} "
              f"{row['seconds']:>8.2f}", file=out, flush=True)
    for row in report["blend_table"]:
        print(f"rating blend: support {row['support']:g}: {row['intercept']:+.4f} + {row['als_weight']:.4f} als "
              f"+ {row['knn_weight']:.4f} knn, valid_rmse {row['valid_rmse']:.5f} out of sample "
              f"({row['in_sample_rmse']:.5f} in sample)", file=out, flush=True)
    rating_pick = picked.rating
    with packed(train_rdd) as arrays:
        rating, _ = fit_rating_model(sc, arrays, rating_pick, scale)  # judges the ranking model's lists
        ranking_table, best_model = _tune_ranking(sc, arrays, rating, base.ranking, ranking_space, train_rdd,
                                                  valid_rdd, out)

    # The blend weight changes no factor: score the best ranking model's lists with each weight.
    blend_table = []
    print(f"{'blend':>6} {'valid_ndcg10':>13}", file=out)
    for blend in blends:
        ndcg = _valid_ndcg(sc, rating, replace(best_model, params=replace(best_model.params, blend=blend)),
                           train_rdd, valid_rdd)
        blend_table.append({"blend": blend, "valid_ndcg_at_10": ndcg})
        print(f"{blend:>6g} {ndcg:>13.5f}", file=out, flush=True)
    best_blend = max(blend_table, key=lambda row: row["valid_ndcg_at_10"])["blend"]
    ranking_pick = replace(best_model.params, blend=best_blend)

    chosen = ModelParams(rating_pick, ranking_pick, picked.neighbours)
    test = evaluate(sc, train_rdd.union(valid_rdd), test_rdd, chosen, scale)
    for rdd in (train_rdd, valid_rdd, test_rdd):
        rdd.unpersist()
    return {"table": table, "rating_blend_table": report["blend_table"], "ranking_table": ranking_table,
            "blend_table": blend_table, "chosen": chosen.as_dict(), "test": test}


def _valid_ndcg(sc, rating, ranking: RankingModel, train_rdd, valid_rdd) -> float:
    lists, state = served_lists(sc, Models(rating, ranking), train_rdd, valid_rdd)
    ndcg = ranking_metrics(lists, len(rating.movie_ids))["ndcg_at_10"]
    state.destroy()
    return ndcg


def _tune_ranking(sc, arrays, rating, base: RankingParams, space: dict, train_rdd, valid_rdd, out):
    """Fit the ranking model for every cell of ``space``; the table, and the model with the best validation NDCG@10."""
    table, best_model, best_ndcg = [], None, -1.0
    print(f"{'rank':>5} {'lambda':>7} {'alpha':>6} {'confidence':>10} {'valid_ndcg10':>13} {'seconds':>8}", file=out)
    for cell in _grid(space):
        params = replace(base, **cell)
        start = time.perf_counter()
        ranking = fit_ranking_model(sc, arrays, params, rating.user_ids, rating.movie_ids)
        seconds = time.perf_counter() - start
        ndcg = _valid_ndcg(sc, rating, ranking, train_rdd, valid_rdd)
        table.append({**cell, "valid_ndcg_at_10": ndcg, "seconds": round(seconds, 2)})
        if ndcg > best_ndcg:
            best_model, best_ndcg = ranking, ndcg
        print(f"{params.rank:>5} {params.reg:>7g} {params.alpha:>6g} {params.confidence:>10} {ndcg:>13.5f} "
              f"{seconds:>8.2f}", file=out, flush=True)
    return table, best_model


def parse_strengths(text: str | None) -> tuple[float, ...]:
    """``--diversify``'s value: a comma list of strengths, each from 0 to 1, once each in the order given (none
    when not given); ValueError naming the flag otherwise."""
    if text is None:
        return ()
    try:
        strengths = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--diversify must be a comma list of numbers, not {text!r}") from None
    if not all(0 <= s <= 1 for s in strengths):
        raise ValueError(f"--diversify strengths must be from 0 to 1, not {text!r}")
    return tuple(dict.fromkeys(strengths))


def build_parser() -> argparse.ArgumentParser:
    rating, ranking = RatingParams(), RankingParams()
    p = argparse.ArgumentParser(description="Evaluate the recommender offline: predicted ratings and served lists.")
    src = p.add_argument_group("data (either --dataset, or --train and --test)")
    src.add_argument("--dataset", default=os.environ.get("RECOMMENDER_DATASET"),
                     help="MovieLens folder or URI (env RECOMMENDER_DATASET)")
    src.add_argument("--train", help="training ratings CSV (userId,movieId,rating,timestamp)")
    src.add_argument("--test", help="test ratings CSV, same format")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of ratings held out (default 0.2)")
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    p.add_argument("--min-count", type=int, default=MIN_COUNT,
                   help=f"lists hold movies with at least this many training ratings (default {MIN_COUNT})")
    p.add_argument("--recs-out", type=Path, help="write every training user's served top-10 as CSV userId,movieId,rank")
    p.add_argument("--diversify",
                   help="comma list of diversify strengths from 0 to 1 (such as 0,0.2,0.5): also score the lists "
                        "re-ranked at each as the service re-ranks them, with their diversity (default: none)")
    src.add_argument("--movies", help="with --train/--test and --diversify: the movies CSV the genres come from "
                                      "(movieId,title,genres)")
    m = p.add_argument_group("rating model (explicit ALS on the bias baseline's residuals)")
    m.add_argument("--rank", type=int, help=f"ALS rank (default: tuned on the training part, else {rating.rank})")
    m.add_argument("--iterations", type=int, help=f"ALS iterations (default {rating.iterations})")
    m.add_argument("--reg", "--lambda", dest="reg", type=float, help=f"ALS lambda (default: tuned, else {rating.reg})")
    m.add_argument("--als-seed", type=int, help=f"ALS seed (default {rating.seed})")
    m.add_argument("--plain", action="store_true", help="plain ALS on raw ratings, no bias baseline")
    r = p.add_argument_group("ranking model (implicit ALS)")
    r.add_argument("--ranking-rank", type=int, help=f"rank (default: tuned, else {ranking.rank})")
    r.add_argument("--ranking-iterations", type=int, help=f"iterations (default {ranking.iterations})")
    r.add_argument("--ranking-lambda", type=float, help=f"lambda (default: tuned, else {ranking.reg})")
    r.add_argument("--alpha", type=float, help=f"confidence scale (default: tuned, else {ranking.alpha})")
    r.add_argument("--confidence", choices=CONFIDENCES,
                   help=f"what a rating tells the model (default: tuned, else {ranking.confidence})")
    n = p.add_argument_group("neighbourhood (item neighbours on the baseline residuals, blended into the rating)")
    n.add_argument("--no-neighbourhood", action="store_true", help="predict ratings with ALS alone")
    p.add_argument("--params", help="start from the parameters in this params.json-shaped file (model flags still "
                                    "override); never taken from the model folder unless named here")
    p.add_argument("--no-tune", action="store_true",
                   help="with no --params and no model flags, use the defaults instead of tuning on a validation "
                        "split carved from the training part (as the service does for a new dataset)")
    p.add_argument("--tune-fits", type=int, default=int(os.environ.get("RECOMMENDER_TUNE_FITS", TuneBudget.fits)),
                   help=f"candidate fits the tuning may make (env RECOMMENDER_TUNE_FITS; default {TuneBudget.fits})")
    p.add_argument("--tune-time-cap", type=float,
                   default=float(os.environ.get("RECOMMENDER_TUNE_TIME_CAP", TuneBudget.seconds)),
                   help="safety net: no new tuning fit starts after this many seconds (env RECOMMENDER_TUNE_TIME_CAP; "
                        f"default {TuneBudget.seconds:g})")
    p.add_argument("--tune", action="store_true",
                   help="pick every model's parameters, the ranking model's too, on a 60/20/20 split and report "
                        "the pick on the test part")
    p.add_argument("--save", action="store_true", help="with --tune: save the picks as the dataset's defaults")
    p.add_argument("--model-dir", help="where --save writes params.json (default models/<dataset name>)")
    p.add_argument("--checkpoint-dir", default=os.environ.get("SPARK_CHECKPOINT_DIR"),
                   help="where ALS checkpoints; on a cluster a path every executor reaches (env SPARK_CHECKPOINT_DIR)")
    p.add_argument("--master", default=os.environ.get("SPARK_MASTER"),
                   help="Spark master (env SPARK_MASTER; default local[*] or spark-submit's)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return p


def params_from_args(args, base: ModelParams) -> ModelParams:
    """``base`` with the command line's overrides of either model's parameters."""
    def given(pairs):
        return {key: getattr(args, arg) for key, arg in pairs if getattr(args, arg) is not None}

    rating = replace(base.rating, **given((("rank", "rank"), ("iterations", "iterations"), ("reg", "reg"),
                                           ("seed", "als_seed"))))
    if args.plain:
        rating = replace(rating, bias=False)
    ranking = replace(base.ranking, **given((("rank", "ranking_rank"), ("iterations", "ranking_iterations"),
                                             ("reg", "ranking_lambda"), ("alpha", "alpha"),
                                             ("confidence", "confidence"))))
    neighbours = replace(base.neighbours, enabled=False) if args.no_neighbourhood else base.neighbours
    return ModelParams(rating, ranking, neighbours)


RATING_FLAGS = ("rank", "iterations", "reg", "als_seed", "plain")


def choose_params(args) -> tuple[ModelParams, TuneBudget | None, str]:
    """The parameters to evaluate, the tuning budget (None: no tuning) and where the parameters come from.

    A saved file only when named (``--params``): the service's params.json was picked on a validation split
    of all the dataset's ratings, which a test split holds.  Without a file or model flags, tuned as the
    service tunes a new dataset, here on the training part only (``--no-tune``: the defaults).
    """
    from storage.params import read_params

    given = read_params(Path(args.params)) if args.params else None
    params = params_from_args(args, given or ModelParams())
    explicit = any(getattr(args, flag) not in (None, False) for flag in RATING_FLAGS)
    budget = None if args.no_tune or given is not None or explicit else TuneBudget(args.tune_fits, args.tune_time_cap)
    if given is not None:
        source = f"the file {args.params}" + (" with model flags" if explicit else "")
    else:
        source = "model flags" if explicit else "tuned on the training part" if budget is not None else "the defaults"
    return params, budget, source


def _genres(sc, layout: movielens.Layout) -> dict[int, tuple[str, ...]]:
    """Each movie's genres, from the layout's movies file."""
    return {movie_id: movie.genres for movie_id, movie in movielens.load_movies(sc, layout).items()}


def fail(message: str) -> int:
    """Print a one-line error and return the exit status for it."""
    print(f"evaluate.py: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None, sc=None) -> int:
    """The command line; ``sc``: run on this SparkContext (and leave it running) instead of starting one."""
    args = build_parser().parse_args(argv)
    if bool(args.train) != bool(args.test) or bool(args.dataset) == bool(args.train):
        return fail("give either --dataset DIR, or both --train FILE and --test FILE")
    if not 0 < args.test_fraction < 1:
        return fail("--test-fraction must be between 0 and 1")
    if args.save and not args.tune:
        return fail("--save goes with --tune")
    if args.min_count < 0:
        return fail("--min-count must be 0 or more")
    try:
        args.diversify = parse_strengths(args.diversify)
    except ValueError as exc:
        return fail(str(exc))
    if args.diversify and args.tune:
        return fail("--diversify does not go with --tune")
    if args.diversify and args.train and not args.movies:
        return fail("--diversify with --train/--test needs --movies FILE (the genres)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.tune_fits < 1 or args.tune_time_cap < 0:
        return fail("--tune-fits must be 1 or more, and --tune-time-cap 0 or more seconds")

    from settings import default_model_dir
    from spark.context import create_context
    from storage.params import save_params

    model_dir = Path(args.model_dir) if args.model_dir else (default_model_dir(args.dataset) if args.dataset else None)
    try:
        params, budget, source = choose_params(args)
    except ModelError as exc:
        return fail(str(exc))

    owned = sc is None
    try:
        sc = create_context(args.master, app_name="recommender-evaluate",
                            checkpoint_dir=args.checkpoint_dir) if owned else sc
    except RuntimeError as exc:
        return fail(str(exc))
    try:
        if args.dataset:
            layout = movielens.detect_layout(sc, args.dataset)
            ratings, bad = movielens.load_ratings(sc, layout)
            if args.tune:
                result = tune(sc, ratings, params, args.seed, budget=TuneBudget(args.tune_fits, args.tune_time_cap))
                chosen = ModelParams.from_dict(result["chosen"])
                if args.save:
                    print(f"saved {result['chosen']} to {save_params(model_dir, chosen, result)}")
                else:
                    save_params(model_dir, None, result)  # the report alone (for eda.py): no params.json
            else:
                train_rdd, test_rdd = ratings.randomSplit([1 - args.test_fraction, args.test_fraction],
                                                          seed=args.seed)
                result = evaluate(sc, train_rdd, test_rdd, params, min_count=args.min_count,
                                  recs_out=args.recs_out, tune_budget=budget, diversify=args.diversify,
                                  genres=_genres(sc, layout) if args.diversify else None)
        else:
            train_rdd, bad = movielens.load_ratings(sc, movielens.Layout("csv", args.train, ""))
            test_rdd, bad_test = movielens.load_ratings(sc, movielens.Layout("csv", args.test, ""))
            genres = _genres(sc, movielens.Layout("csv", "", args.movies)) if args.diversify else None
            result = evaluate(sc, train_rdd, test_rdd, params, min_count=args.min_count, recs_out=args.recs_out,
                              tune_budget=budget, diversify=args.diversify, genres=genres)
            result["malformed_lines"] = bad.value + bad_test.value
    except (movielens.DatasetError, OSError) as exc:
        return fail(str(exc))
    except Exception as exc:  # Spark wraps missing files in Py4J errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return fail(first)
    finally:
        if owned:
            sc.stop()
    if "malformed_lines" not in result and not args.tune:
        result["malformed_lines"] = bad.value
    result["params_source"] = source
    result["split"] = ({"train": args.train, "test": args.test} if args.train else
                       {"dataset": args.dataset, "seed": args.seed,
                        "parts": [0.6, 0.2, 0.2] if args.tune else [1 - args.test_fraction, args.test_fraction]})
    measured = result["test"] if args.tune else result
    print(comparison(measured))
    if "diversity" in result:
        print(diversity_table(result["diversity"]))
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
