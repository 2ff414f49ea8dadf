"""What "why this movie" (serving.explain.because) adds to a top-10; one JSON line.

    .venv/bin/python bench/explain_cost.py [--dataset ../shared/datasets/ml-latest-small.zip] [--rounds 300]

No Spark: the models are NumPy stand-ins of the trained ones at their served shapes (damped biases; rating
factors of rank 12 and ranking factors of rank 128 from SVDs; for each movie the 200 with the largest ranking
dot product as neighbours, by the shrunk cosine of the rating residuals over common raters; k 40), over the
real ratings of ``--dataset`` (ml-latest-small's ``ratings.csv`` and ``movies.csv``, in a folder or the zip).
A request's work is what ``Recommender.recommend`` does with NumPy (candidates with 25 ratings, ``top_n``,
``predicted_ratings``); it is timed alone and followed by ``because``, interleaved user by user, for the
users with the rating counts nearest ``--ratings``.  ``fallback_us`` times ``because`` for the same lists as a
stranger (``user`` None): the ranking model's cosine for every row, its costliest path.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import sys
import time
import zipfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as server.py serves: one BLAS thread per request
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model import (  # noqa: E402
    Models,
    NeighbourModel,
    NeighbourParams,
    RankingModel,
    RankingParams,
    RatingModel,
    RatingParams,
    Scale,
)
from serving.explain import because  # noqa: E402
from serving.snapshot import Snapshot, candidates  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def read_csv(dataset: Path, name: str) -> list[list[str]]:
    """The rows of ``name`` (header dropped) from a dataset folder or its zip."""
    if dataset.suffix == ".zip":
        with zipfile.ZipFile(dataset) as archive:
            member = next(m for m in archive.namelist() if m.endswith("/" + name))
            text = io.TextIOWrapper(archive.open(member), encoding="utf-8")
            return list(csv.reader(text))[1:]
    with open(dataset / name, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))[1:]


def stand_in_models(users: np.ndarray, movies: np.ndarray, values: np.ndarray, width: int = 200) -> Models:
    """Models with the trained ones' shapes and a plausible neighbourhood, from NumPy alone."""
    user_ids, u = np.unique(users, return_inverse=True)
    movie_ids, m = np.unique(movies, return_inverse=True)
    mu = float(values.mean())
    movie_bias = np.bincount(m, values - mu) / (np.bincount(m) + 10.0)
    user_bias = np.bincount(u, values - mu - movie_bias[m]) / (np.bincount(u) + 5.0)
    residual = np.zeros((len(user_ids), len(movie_ids)), dtype=np.float32)
    residual[u, m] = values - mu - user_bias[u] - movie_bias[m]
    rated = np.zeros_like(residual)
    rated[u, m] = 1.0
    left, sv, right = np.linalg.svd(residual, full_matrices=False)
    rating = RatingModel(mu, user_ids, user_bias, left[:, :12] * np.sqrt(sv[:12]), movie_ids, movie_bias,
                         right[:12].T * np.sqrt(sv[:12]), RatingParams(rank=12), Scale(0.5, 5.0, 0.5))
    left, sv, right = np.linalg.svd(rated, full_matrices=False)
    ranking = RankingModel(user_ids, left[:, :128] * np.sqrt(sv[:128]), movie_ids, right[:128].T * np.sqrt(sv[:128]),
                           RankingParams(rank=128))
    factors = ranking.movie_factors.astype(np.float32)
    norms = np.linalg.norm(residual, axis=0) + 1e-9
    near = np.zeros((len(movie_ids), width), dtype=np.int32)
    sims = np.zeros((len(movie_ids), width), dtype=np.float32)
    for lo in range(0, len(movie_ids), 1000):
        block = np.arange(lo, min(lo + 1000, len(movie_ids)))
        dots = factors[block] @ factors.T
        dots[np.arange(len(block)), block] = -np.inf
        pick = np.argpartition(-dots, width, axis=1)[:, :width]
        common = np.take_along_axis(rated[:, block].T @ rated, pick, axis=1)
        cosine = np.take_along_axis(residual[:, block].T @ residual, pick, axis=1) / norms[block, None] / norms[pick]
        shrunk = cosine * np.maximum(common - 1, 0) / (np.maximum(common - 1, 0) + 100.0)
        order = np.argsort(-shrunk, axis=1)
        near[block], sims[block] = np.take_along_axis(pick, order, axis=1), np.take_along_axis(shrunk, order, axis=1)
    return Models(rating, ranking, NeighbourModel(near, sims, NeighbourParams(neighbours=width)))


def microseconds(call, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = call(*args)
    return (time.perf_counter() - start) * 1e6, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "ml-latest-small.zip"))
    parser.add_argument("--ratings", type=int, default=500, help="time the users with about this many ratings")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    dataset = Path(args.dataset)
    table = np.array(read_csv(dataset, "ratings.csv"))
    users, movies, values = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2].astype(float)
    catalogue = np.unique(np.array([int(r[0]) for r in read_csv(dataset, "movies.csv")] + movies.tolist()))
    started = time.perf_counter()
    snapshot = Snapshot.build(stand_in_models(users, movies, values), catalogue)
    build_s = time.perf_counter() - started
    rows_of = np.searchsorted(catalogue, movies)
    counts = np.bincount(rows_of, minlength=len(catalogue))
    ids, per_user = np.unique(users, return_counts=True)
    chosen = ids[np.argsort(np.abs(per_user - args.ratings), kind="stable")[:args.users]]
    histories = {}
    for user in chosen.tolist():
        mine = users == user
        order = np.argsort(rows_of[mine])
        histories[user] = rows_of[mine][order], values[mine][order]

    def request(user: int):
        vectors = snapshot.user_vectors(user)
        rated_rows, ratings = histories[user]
        rows, _ = snapshot.top_n(vectors, candidates(counts, 25, rated_rows), 10, counts)
        snapshot.predicted_ratings(vectors, rows, rated=(rated_rows, ratings))
        return vectors, rated_rows, ratings, rows

    plain, explain, fallback, explained = [], [], [], []
    for _ in range(args.rounds):
        for user in chosen.tolist():
            t, (vectors, rated_rows, ratings, rows) = microseconds(request, user)
            plain.append(t)
            t, reasons = microseconds(because, snapshot, vectors, rated_rows, ratings, rows)
            explain.append(t)
            fallback.append(microseconds(because, snapshot, None, rated_rows, ratings, rows)[0])
            explained.append(sum(map(bool, reasons)) / len(rows))
    request_us, because_us = statistics.median(plain), statistics.median(explain)
    print(json.dumps({
        "dataset": dataset.name, "catalogue": len(catalogue), "build_s": round(build_s, 1),
        "users": len(chosen), "ratings_per_user": sorted(int(per_user[ids == u][0]) for u in chosen),
        "rounds": args.rounds, "top": 10, "request_us_p50": round(request_us, 1),
        "because_us_p50": round(because_us, 1), "because_us_p99": round(float(np.percentile(explain, 99)), 1),
        "fallback_us_p50": round(statistics.median(fallback), 1),
        "with_explain_ratio": round((request_us + because_us) / request_us, 3),
        "rows_with_reasons": round(float(np.mean(explained)), 3)}))


if __name__ == "__main__":
    main()
