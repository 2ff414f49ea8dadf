"""Offline evaluation: honest RMSE over every test pair, and the quality of the lists as served.

    python evaluate.py --dataset datasets/ml-latest-small --json
    python evaluate.py --train train.csv --test test.csv --json [--recs-out recs.csv]
    python evaluate.py --dataset datasets/ml-latest-small --tune [--save]

Every test pair gets a predicted rating (unseen users and movies fall back to
the baseline), so ``coverage`` is the fraction of test pairs predicted and must
be 1.0; RMSE and MAE come from ``pyspark.mllib.evaluation.RegressionMetrics``.
The top-10 lists are made by the service's own code (serving.Snapshot: the
candidates are the movies the user did not rate in training with at least
``--min-count`` training ratings), and so is a most-popular list from the same
candidates; ``RankingMetrics`` scores both against the test ratings >= 4.  The
last line printed with ``--json`` is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
import warnings
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
    RatingModel,
    RatingParams,
    Scale,
)
from serving import Snapshot, candidates, top_k
from training import fit_models, fit_ranking_model, fit_rating_model, infer_scale

log = logging.getLogger("evaluate")

RELEVANT = 4.0
TOP_K = 10
MIN_COUNT = 25  # the service's default
TUNE_RANKS = (8, 12, 16, 24)
TUNE_REGS = (0.05, 0.1, 0.15, 0.2, 0.3)
# The ranking grid: mllib scales lambda by each user's/movie's count and applies alpha inside, so its
# best settings are its own (wide ranks, small alpha); the defaults won on ml-latest-small.
TUNE_RANKING = {"rank": (64, 128, 200), "reg": (0.05, 0.1, 0.2), "alpha": (0.1, 0.3, 1.0),
                "confidence": ("binary", "signed")}
TUNE_BLENDS = (0.0, 0.25, 0.5, 1.0)


def _predict_partition(rating_bc):
    def predict(rows):
        rows = list(rows)
        if not rows:
            return
        model: RatingModel = rating_bc.value
        users = np.array([r[0] for r in rows], dtype=np.int64)
        movies = np.array([r[1] for r in rows], dtype=np.int64)
        full = model.predict_pairs(users, movies)
        base = model.baseline_pairs(users, movies)
        for r, p, b in zip(rows, full.tolist(), base.tolist()):
            yield float(p), float(r[2]), float(b)
    return predict


def rating_metrics(sc, rating: RatingModel, test_rdd) -> dict:
    """RMSE, MAE and coverage of the rating model over every pair of ``test_rdd``, and the baseline's RMSE.

    Sums of squared and absolute errors in one pass (mllib's RegressionMetrics
    would build a deprecated SQLContext just for this).
    """
    bc = sc.broadcast(rating)

    def errors(t):
        prediction, actual, base = t
        finite = math.isfinite(prediction)
        err = prediction - actual if finite else 0.0
        return (1, int(finite), err * err, abs(err), (base - actual) ** 2)

    n_test, predicted, sq, ab, base_sq = test_rdd.mapPartitions(_predict_partition(bc)).map(errors).fold(
        (0, 0, 0.0, 0.0, 0.0), lambda a, b: tuple(x + y for x, y in zip(a, b)))
    bc.destroy()
    if not n_test:
        return {"rmse": float("nan"), "mae": float("nan"), "coverage": 0.0, "baseline_rmse": float("nan")}
    return {"rmse": round(math.sqrt(sq / predicted), 5) if predicted else float("nan"),
            "mae": round(ab / predicted, 5) if predicted else float("nan"),
            "coverage": predicted / n_test,
            "baseline_rmse": round(math.sqrt(base_sq / n_test), 5)}


def _lists_partition(state_bc, k: int, min_count: int):
    """For each (user, (train movies, relevant test movies)) yield the served and the popular top-k."""
    def lists(rows):
        snapshot, counts = state_bc.value
        for user, (seen, relevant) in rows:
            seen_rows = np.searchsorted(snapshot.movie_ids, np.fromiter(seen, dtype=np.int64))
            shown = candidates(counts, min_count, seen_rows)
            served, _ = snapshot.top_n(snapshot.user_vectors(user), shown, k, counts)
            popular = top_k(counts, shown, k)
            yield (user, snapshot.movie_ids[served].tolist(), snapshot.movie_ids[popular].tolist(),
                   sorted(relevant or ()))
    return lists


def served_lists(sc, models: Models, train_rdd, test_rdd, k: int = TOP_K, min_count: int = MIN_COUNT):
    """An RDD of (user, served top-k, most-popular top-k, relevant test movies) for every training user.

    The served list is what the service answers for the user with the models
    trained on ``train_rdd`` (same code: serving.Snapshot); counts for
    ``min_count`` and popularity are the training ratings'.
    """
    snapshot = Snapshot.build(models, models.rating.movie_ids)
    counts_by_id = dict(train_rdd.map(lambda t: (t[1], 1)).reduceByKey(lambda a, b: a + b).collect())
    counts = np.array([counts_by_id.get(int(m), 0) for m in snapshot.movie_ids], dtype=np.int64)
    state = sc.broadcast((snapshot, counts))
    seen = train_rdd.map(lambda t: (t[0], t[1])).groupByKey()
    relevant = test_rdd.filter(lambda t: t[2] >= RELEVANT).map(lambda t: (t[0], t[1])).groupByKey()
    return seen.leftOuterJoin(relevant).mapPartitions(_lists_partition(state, k, min_count)), state


def ranking_metrics(lists, n_movies: int, k: int = TOP_K) -> dict:
    """Precision, recall and NDCG at k (``RankingMetrics``) of the served and the popular lists, and
    catalogue coverage (distinct movies in all served lists / ``n_movies``)."""
    from pyspark.mllib.evaluation import RankingMetrics

    lists = lists.cache()
    judged = lists.filter(lambda t: t[3])
    result = {}
    for prefix, i in (("", 1), ("popularity_", 2)):
        with warnings.catch_warnings():  # RankingMetrics builds a SQLContext, deprecated since Spark 3.0
            warnings.filterwarnings("ignore", "Deprecated in 3.0.0", FutureWarning)
            metrics = RankingMetrics(judged.map(lambda t, i=i: (t[i], t[3])))
        shown = lists.flatMap(lambda t, i=i: t[i]).distinct().count()
        result.update({f"{prefix}precision_at_{k}": round(metrics.precisionAt(k), 5),
                       f"{prefix}recall_at_{k}": round(metrics.recallAt(k), 5),
                       f"{prefix}ndcg_at_{k}": round(metrics.ndcgAt(k), 5),
                       f"{prefix}catalog_coverage": round(shown / n_movies, 5) if n_movies else 0.0})
    result["ranked_users"] = judged.count()
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
             ranking: bool = True, min_count: int = MIN_COUNT, recs_out: Path | None = None) -> dict:
    """Train both models on ``train_rdd`` and measure them on ``test_rdd``.

    Ratings: every test pair.  Lists (``ranking``): the served top-10 of every
    training user, and the most-popular list from the same candidates.
    """
    train_rdd = train_rdd.cache()
    test_rdd = test_rdd.cache()
    n_train, n_test = train_rdd.count(), test_rdd.count()
    if n_train == 0 or n_test == 0:
        raise movielens.DatasetError(f"need ratings on both sides: {n_train} train, {n_test} test")
    scale = scale or infer_scale(train_rdd)
    models = fit_models(sc, train_rdd, params, scale)
    result = rating_metrics(sc, models.rating, test_rdd)
    if ranking:
        lists, state = served_lists(sc, models, train_rdd, test_rdd, TOP_K, min_count)
        n_movies = train_rdd.map(lambda t: t[1]).union(test_rdd.map(lambda t: t[1])).distinct().count()
        result.update(ranking_metrics(lists, n_movies))
        if recs_out is not None:
            result["recs_written"] = write_recs(lists, recs_out)
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


def tune(sc, ratings, base: ModelParams, seed: int, ranks=TUNE_RANKS, regs=TUNE_REGS,
         ranking_space: dict | None = None, blends=TUNE_BLENDS, out=sys.stdout) -> dict:
    """Pick each model's parameters on a validation split (60/20/20), then report the pick on the test split.

    The rating model by validation RMSE over rank x lambda; the ranking model by
    validation NDCG@10 of the lists as served, over ``ranking_space`` and then
    over the blend weights.
    """
    train_rdd, valid_rdd, test_rdd = (r.cache() for r in ratings.randomSplit([0.6, 0.2, 0.2], seed=seed))
    scale = infer_scale(train_rdd)
    ranking_space = TUNE_RANKING if ranking_space is None else ranking_space

    table, rating, best_rmse = [], None, float("inf")
    print(f"{'rank':>5} {'lambda':>7} {'valid_rmse':>11} {'seconds':>8}", file=out)
    for rank, reg in product(ranks, regs):
        params = replace(base.rating, rank=rank, reg=reg)
        start = time.perf_counter()
        model, _ = fit_rating_model(sc, train_rdd, params, scale)
        seconds = time.perf_counter() - start
        rmse = rating_metrics(sc, model, valid_rdd)["rmse"]
        table.append({"rank": rank, "reg": reg, "valid_rmse": rmse, "seconds": round(seconds, 2)})
        if rmse < best_rmse:  # the ranking model's lists are judged with the picked rating model
            rating, best_rmse = model, rmse
        print(f"{rank:>5} {reg:>7g} {rmse:>11.5f} {seconds:>8.2f}", file=out, flush=True)
    rating_pick = rating.params

    def valid_ndcg(ranking: RankingModel) -> float:
        lists, state = served_lists(sc, Models(rating, ranking), train_rdd, valid_rdd)
        ndcg = ranking_metrics(lists, len(rating.movie_ids))["ndcg_at_10"]
        state.destroy()
        return ndcg

    ranking_table, best_model, best_ndcg = [], None, -1.0
    print(f"{'rank':>5} {'lambda':>7} {'alpha':>6} {'confidence':>10} {'valid_ndcg10':>13} {'seconds':>8}", file=out)
    for cell in _grid(ranking_space):
        params = replace(base.ranking, **cell)
        start = time.perf_counter()
        ranking = fit_ranking_model(sc, train_rdd, params, rating.user_ids, rating.movie_ids)
        seconds = time.perf_counter() - start
        ndcg = valid_ndcg(ranking)
        ranking_table.append({**cell, "valid_ndcg_at_10": ndcg, "seconds": round(seconds, 2)})
        if ndcg > best_ndcg:
            best_model, best_ndcg = ranking, ndcg
        print(f"{params.rank:>5} {params.reg:>7g} {params.alpha:>6g} {params.confidence:>10} {ndcg:>13.5f} "
              f"{seconds:>8.2f}", file=out, flush=True)
    # The blend weight changes no factor: score the best ranking model's lists with each weight.
    blend_table = []
    print(f"{'blend':>6} {'valid_ndcg10':>13}", file=out)
    for blend in blends:
        ndcg = valid_ndcg(replace(best_model, params=replace(best_model.params, blend=blend)))
        blend_table.append({"blend": blend, "valid_ndcg_at_10": ndcg})
        print(f"{blend:>6g} {ndcg:>13.5f}", file=out, flush=True)
    best_blend = max(blend_table, key=lambda row: row["valid_ndcg_at_10"])["blend"]
    ranking_pick = replace(best_model.params, blend=best_blend)

    chosen = ModelParams(rating_pick, ranking_pick)
    test = evaluate(sc, train_rdd.union(valid_rdd), test_rdd, chosen, scale)
    for rdd in (train_rdd, valid_rdd, test_rdd):
        rdd.unpersist()
    return {"table": table, "ranking_table": ranking_table, "blend_table": blend_table, "chosen": chosen.as_dict(),
            "test": test}


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
    m = p.add_argument_group("rating model (explicit ALS on the bias baseline's residuals)")
    m.add_argument("--rank", type=int, help=f"ALS rank (default: tuned for the dataset, else {rating.rank})")
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
    p.add_argument("--tune", action="store_true",
                   help="pick both models' parameters on a validation split carved from the training data")
    p.add_argument("--save", action="store_true", help="with --tune: save the picks as the dataset's defaults")
    p.add_argument("--model-dir", help="where --save writes params.json (default models/<dataset name>)")
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
    return ModelParams(rating, ranking)


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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from engine import default_model_dir, load_params
    from sparkctx import create_context

    model_dir = Path(args.model_dir) if args.model_dir else (default_model_dir(args.dataset) if args.dataset else None)
    try:
        params = params_from_args(args, load_params(model_dir) if model_dir else ModelParams())
    except ModelError as exc:
        return fail(str(exc))

    owned = sc is None
    try:
        sc = create_context(args.master, app_name="recommender-evaluate") if owned else sc
    except RuntimeError as exc:
        return fail(str(exc))
    try:
        if args.dataset:
            layout = movielens.detect_layout(sc, args.dataset)
            ratings, bad = movielens.load_ratings(sc, layout)
            if args.tune:
                result = tune(sc, ratings, params, args.seed)
                model_dir.mkdir(parents=True, exist_ok=True)
                (model_dir / "tune.json").write_text(json.dumps(result, indent=2) + "\n")  # for eda.py
                if args.save:
                    (model_dir / "params.json").write_text(json.dumps(result["chosen"], indent=2) + "\n")
                    print(f"saved {result['chosen']} to {model_dir / 'params.json'}")
            else:
                train_rdd, test_rdd = ratings.randomSplit([1 - args.test_fraction, args.test_fraction],
                                                          seed=args.seed)
                result = evaluate(sc, train_rdd, test_rdd, params, min_count=args.min_count,
                                  recs_out=args.recs_out)
        else:
            train_rdd, bad = movielens.load_ratings(sc, movielens.Layout("csv", args.train, ""))
            test_rdd, bad_test = movielens.load_ratings(sc, movielens.Layout("csv", args.test, ""))
            result = evaluate(sc, train_rdd, test_rdd, params, min_count=args.min_count, recs_out=args.recs_out)
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
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
