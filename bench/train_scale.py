"""Scaling benchmark: load and training time, peak memory and RMSE for growing synthetic datasets.

    .venv/bin/python bench/train_scale.py --sizes 0.1M,1M,5M,20M

For each size, a synthetic MovieLens-shaped dataset (datasets/synthetic.py) is
written once under datasets/synthetic-<size>/, then a fresh process starts
Spark (local[2] unless --master), loads and counts the ratings, splits 80/20,
trains the models (rating model rank 10, 10 iterations; ranking model rank
--ranking-rank, default 128, 10 iterations; the neighbourhood) and measures
RMSE on every test pair, of the blend and of each part.  Each size prints one
JSON line with the load seconds, the training seconds of each model, the
driver's peak RSS and the JVM's peak RSS (sampled from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import ROOT, tree_rss_mb

sys.path.insert(0, str(ROOT))


def parse_size(text: str) -> int:
    text = text.strip().upper()
    factor = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * factor)


def measure(dataset: str, rank: int, iterations: int, ranking_rank: int, master: str) -> dict:
    """Run in a fresh process: load, train and evaluate one dataset, tracking peak memory."""
    from datasets import movielens
    from evaluate import evaluate
    from model import ModelParams, RankingParams, RatingParams
    from spark.context import create_context

    peak = {"jvm_mb": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["jvm_mb"] = max(peak["jvm_mb"], tree_rss_mb(os.getpid())["children_mb"])
            done.wait(0.5)

    threading.Thread(target=sample, daemon=True).start()
    sc = create_context(master, app_name="train-scale")
    start = time.perf_counter()
    ratings, bad = movielens.load_ratings(sc, movielens.detect_layout(sc, dataset))
    ratings = ratings.cache()
    n = ratings.count()
    load_seconds = time.perf_counter() - start
    train, test = ratings.randomSplit([0.8, 0.2], seed=42)
    params = ModelParams(RatingParams(rank=rank, iterations=iterations), RankingParams(rank=ranking_rank))
    result = evaluate(sc, train, test, params, ranking=False)
    done.set()
    sc.stop()
    return {
        "ratings": n, "malformed": bad.value, "partitions": ratings.getNumPartitions(),
        "load_seconds": round(load_seconds, 2), "train_seconds": result["fit_seconds"],
        "rmse": result["rmse"], "baseline_rmse": result["baseline_rmse"],
        "rmse_by_part": {part: row["rmse"] for part, row in result["models"].items()},
        "n_train": result["n_train"],
        "driver_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "jvm_peak_mb": round(peak["jvm_mb"], 1), "rank": rank, "iterations": iterations,
        "ranking_rank": ranking_rank, "master": master,
        "driver_memory": os.environ.get("SPARK_DRIVER_MEMORY", "4g"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description="Training cost against dataset size, on synthetic MovieLens data.")
    p.add_argument("--sizes", default="0.1M,1M,5M,20M", help="comma-separated sizes (K or M suffix)")
    p.add_argument("--data-dir", type=Path, default=ROOT / "datasets", help="where synthetic-<size>/ go")
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--ranking-rank", type=int, default=128, help="rank of the ranking model (implicit ALS)")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this dataset in this process
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.rank, args.iterations, args.ranking_rank, args.master)))
        return 0
    for text in args.sizes.split(","):
        n = parse_size(text)
        target = args.data_dir / f"synthetic-{text.strip().lower()}"
        if not (target / "ratings.csv").exists():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "datasets.synthetic", "--ratings", str(n), "--out", str(target)],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            print(f"generated {target} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        out = subprocess.run([sys.executable, __file__, "--one", str(target), "--rank", str(args.rank),
                              "--iterations", str(args.iterations), "--ranking-rank", str(args.ranking_rank),
                              "--master", args.master],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(json.dumps({"size": text, "error": out.stderr.strip().splitlines()[-1:]}))
            continue
        print(json.dumps({"size": text, **json.loads(out.stdout.strip().splitlines()[-1])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
