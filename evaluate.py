"""Offline evaluation of the recommender: honest RMSE over every test pair, ranking metrics, tuning.

    python evaluate.py --dataset datasets/ml-latest-small --json
    python evaluate.py --train train.csv --test test.csv --json
    python evaluate.py --dataset datasets/ml-latest-small --tune [--save]

Every test pair gets a prediction (unseen users and movies fall back to the
baseline), so ``coverage`` is the fraction of test pairs predicted and must be
1.0; RMSE and MAE come from ``pyspark.mllib.evaluation.RegressionMetrics``,
precision@10 and NDCG@10 (relevant = test rating >= 4) from ``RankingMetrics``.
The last line printed with ``--json`` is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from datasets import movielens
from model import FactorModel, Scale, TrainParams
from training import infer_scale, train

log = logging.getLogger("evaluate")

RELEVANT = 4.0
TOP_K = 10
TUNE_RANKS = (8, 12, 16, 24)
TUNE_REGS = (0.05, 0.1, 0.15, 0.2, 0.3)


def _predict_partition(model_bc):
    def predict(rows):
        rows = list(rows)
        if not rows:
            return
        model: FactorModel = model_bc.value
        users = np.array([r[0] for r in rows], dtype=np.int64)
        movies = np.array([r[1] for r in rows], dtype=np.int64)
        full = model.predict_pairs(users, movies)
        base = model.baseline_pairs(users, movies)
        for r, p, b in zip(rows, full.tolist(), base.tolist()):
            yield float(p), float(r[2]), float(b)
    return predict


def _rank_partition(model_bc, k: int):
    """For each (user, (relevant test movies, train movies)) yield (top-k predicted, relevant)."""
    def rank(rows):
        model: FactorModel = model_bc.value
        for user, (relevant, seen) in rows:
            scores = model.predict_pairs(np.full(len(model.movie_ids), user), model.movie_ids)
            seen_rows = model.movie_rows(np.fromiter(seen or (), dtype=np.int64))
            scores[seen_rows[seen_rows >= 0]] = -np.inf
            top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            yield [int(m) for m in model.movie_ids[top]], [int(m) for m in relevant]
    return rank


def evaluate(sc, train_rdd, test_rdd, params: TrainParams, scale: Scale | None = None,
             ranking: bool = True) -> dict:
    """Train on ``train_rdd`` and measure on every pair of ``test_rdd`` (``ranking``: also precision/NDCG@10)."""
    from pyspark.mllib.evaluation import RankingMetrics, RegressionMetrics

    train_rdd = train_rdd.cache()
    test_rdd = test_rdd.cache()
    n_train, n_test = train_rdd.count(), test_rdd.count()
    if n_train == 0 or n_test == 0:
        raise movielens.DatasetError(f"need ratings on both sides: {n_train} train, {n_test} test")
    scale = scale or infer_scale(train_rdd)
    start = time.perf_counter()
    model = train(sc, train_rdd, params, scale)
    fit_seconds = time.perf_counter() - start
    model_bc = sc.broadcast(model)

    predictions = test_rdd.mapPartitions(_predict_partition(model_bc)).cache()
    predicted = predictions.filter(lambda t: math.isfinite(t[0])).count()
    full = RegressionMetrics(predictions.map(lambda t: (t[0], t[1])))
    base = RegressionMetrics(predictions.map(lambda t: (t[2], t[1])))

    result = {
        "rmse": round(full.rootMeanSquaredError, 5),
        "mae": round(full.meanAbsoluteError, 5),
        "coverage": predicted / n_test,
        "baseline_rmse": round(base.rootMeanSquaredError, 5),
    }
    if ranking:
        relevant = test_rdd.filter(lambda t: t[2] >= RELEVANT).map(lambda t: (t[0], t[1])).groupByKey()
        seen = train_rdd.map(lambda t: (t[0], t[1])).groupByKey()
        metrics = RankingMetrics(relevant.leftOuterJoin(seen).mapPartitions(_rank_partition(model_bc, TOP_K)))
        result[f"precision_at_{TOP_K}"] = round(metrics.precisionAt(TOP_K), 5)
        result[f"ndcg_at_{TOP_K}"] = round(metrics.ndcgAt(TOP_K), 5)
    result.update({
        "n_train": n_train,
        "n_test": n_test,
        "fit_seconds": round(fit_seconds, 2),
        "params": params.as_dict(),
        "scale": scale.__dict__,
    })
    predictions.unpersist()
    model_bc.unpersist()
    train_rdd.unpersist()
    test_rdd.unpersist()
    return result


def tune(sc, ratings, base: TrainParams, seed: int, ranks=TUNE_RANKS, regs=TUNE_REGS,
         out=sys.stdout) -> dict:
    """Pick rank and lambda on a validation split (60/20/20), then report the test RMSE of the pick."""
    from pyspark.mllib.evaluation import RegressionMetrics

    train_rdd, valid_rdd, test_rdd = (r.cache() for r in ratings.randomSplit([0.6, 0.2, 0.2], seed=seed))
    table = []
    scale = infer_scale(train_rdd)
    print(f"{'rank':>5} {'lambda':>7} {'valid_rmse':>11} {'seconds':>8}", file=out)
    for rank in ranks:
        for reg in regs:
            params = replace(base, rank=rank, reg=reg)
            start = time.perf_counter()
            model = train(sc, train_rdd, params, scale)
            seconds = time.perf_counter() - start
            bc = sc.broadcast(model)
            rmse = RegressionMetrics(valid_rdd.mapPartitions(_predict_partition(bc)).map(
                lambda t: (t[0], t[1]))).rootMeanSquaredError
            bc.unpersist()
            table.append({"rank": rank, "reg": reg, "valid_rmse": round(rmse, 5), "seconds": round(seconds, 2)})
            print(f"{rank:>5} {reg:>7g} {rmse:>11.5f} {seconds:>8.2f}", file=out, flush=True)
    best = min(table, key=lambda row: row["valid_rmse"])
    chosen = replace(base, rank=best["rank"], reg=best["reg"])
    test = evaluate(sc, train_rdd.union(valid_rdd), test_rdd, chosen, scale)
    return {"table": table, "chosen": chosen.as_dict(), "test": test}


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainParams()
    p = argparse.ArgumentParser(description="Evaluate the ALS recommender offline.")
    src = p.add_argument_group("data (either --dataset, or --train and --test)")
    src.add_argument("--dataset", default=os.environ.get("RECOMMENDER_DATASET"),
                     help="MovieLens folder or URI (env RECOMMENDER_DATASET)")
    src.add_argument("--train", help="training ratings CSV (userId,movieId,rating,timestamp)")
    src.add_argument("--test", help="test ratings CSV, same format")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of ratings held out (default 0.2)")
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    p.add_argument("--rank", type=int, help=f"ALS rank (default: tuned for the dataset, else {defaults.rank})")
    p.add_argument("--iterations", type=int, help=f"ALS iterations (default {defaults.iterations})")
    p.add_argument("--reg", "--lambda", dest="reg", type=float,
                   help=f"ALS lambda (default: tuned, else {defaults.reg})")
    p.add_argument("--als-seed", type=int, help=f"ALS seed (default {defaults.seed})")
    p.add_argument("--plain", action="store_true", help="plain ALS on raw ratings, no bias baseline")
    p.add_argument("--tune", action="store_true", help="grid-search rank and lambda on a validation split")
    p.add_argument("--save", action="store_true", help="with --tune: save the pick as the dataset's defaults")
    p.add_argument("--model-dir", help="where --save writes params.json (default models/<dataset name>)")
    p.add_argument("--master", default=os.environ.get("SPARK_MASTER"),
                   help="Spark master (env SPARK_MASTER; default local[*] or spark-submit's)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return p


def fail(message: str) -> int:
    """Print a one-line error and return the exit status for it."""
    print(f"evaluate.py: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.train) != bool(args.test) or bool(args.dataset) == bool(args.train):
        return fail("give either --dataset DIR, or both --train FILE and --test FILE")
    if not 0 < args.test_fraction < 1:
        return fail("--test-fraction must be between 0 and 1")
    if args.save and not args.tune:
        return fail("--save goes with --tune")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from engine import default_model_dir, load_params
    from sparkctx import create_context

    model_dir = Path(args.model_dir) if args.model_dir else (default_model_dir(args.dataset) if args.dataset else None)
    params = load_params(model_dir) if model_dir else TrainParams()
    if args.plain:
        params = replace(params, bias=False)
    overrides = {k: getattr(args, a) for k, a in
                 (("rank", "rank"), ("iterations", "iterations"), ("reg", "reg"), ("seed", "als_seed"))
                 if getattr(args, a) is not None}
    params = replace(params, **overrides)

    try:
        sc = create_context(args.master, app_name="recommender-evaluate")
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
                    chosen = {k: result["chosen"][k] for k in ("rank", "reg")}
                    (model_dir / "params.json").write_text(json.dumps(chosen, indent=2) + "\n")
                    print(f"saved {chosen} to {model_dir / 'params.json'}")
            else:
                train_rdd, test_rdd = ratings.randomSplit([1 - args.test_fraction, args.test_fraction],
                                                          seed=args.seed)
                result = evaluate(sc, train_rdd, test_rdd, params)
        else:
            train_rdd, bad = movielens.load_ratings(sc, movielens.Layout("csv", args.train, ""))
            test_rdd, bad_test = movielens.load_ratings(sc, movielens.Layout("csv", args.test, ""))
            result = evaluate(sc, train_rdd, test_rdd, params)
            result["malformed_lines"] = bad.value + bad_test.value
    except (movielens.DatasetError, OSError) as exc:
        return fail(str(exc))
    except Exception as exc:  # Spark wraps missing files in Py4J errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return fail(first)
    finally:
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
