"""POST latency while the trainer compacts a large ratings store (issue: compaction must not block writers).

    .venv/bin/python bench/compaction.py [--ratings 1000000] [--per-request 10] [--store postgresql://...]

Builds a store holding ``--ratings`` posted ratings (requests of ``--per-request``
ratings from random users, so many re-rate a movie and are compacted away),
then measures POSTs (``append``, durable, from one thread: a transaction each) in this process
while another process runs ``compact`` on the same store, as the trainer does
after publishing a version.  SQLite in a temporary folder unless ``--store``
(or RECOMMENDER_STORE) names an empty PostgreSQL database.  Prints one JSON object: the POST
latency percentiles during compaction and, for comparison, on the quiet store.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from storage.backends import open_store  # noqa: E402
from storage.store import Store  # noqa: E402


def build(store: Store, n_ratings: int, per_request: int, seed: int = 1) -> int:
    """Fill ``store`` with ``n_ratings`` posted ratings in requests of ``per_request``; returns the last request."""
    rng = random.Random(seed)
    requests = n_ratings // per_request
    with store.writing() as db:
        db.executemany('INSERT INTO ratings (seq, "user", movie, rating, time) VALUES (?, ?, ?, ?, ?)',
                       [(seq, user, movie, rng.randint(1, 10) / 2, 0.0)
                        for seq in range(1, requests + 1)
                        for user in (rng.randint(1, 5_000),)
                        for movie in rng.sample(range(1, 400), per_request)])
        db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(requests),))
    return requests


def compact(location: tuple, upto: int, started, result) -> None:
    store = open_store(*location)
    started.set()
    start = time.perf_counter()
    deleted = store.compact(upto)
    result.put({"deleted": deleted, "seconds": round(time.perf_counter() - start, 2)})
    store.close()


def posts(store: Store, rng: random.Random, until) -> list[float]:
    times = []
    while not until():
        ratings = [(rng.randint(1, 9000), rng.randint(1, 10) / 2) for _ in range(3)]
        start = time.perf_counter()
        store.append(rng.randint(1, 20_000), list(dict(ratings).items()))
        times.append((time.perf_counter() - start) * 1000)
    return times


def percentiles(times: list[float]) -> dict:
    ordered = sorted(times)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"posts": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "p999_ms": at(0.999),
            "max_ms": round(ordered[-1], 2), "over_20_ms": sum(t > 20 for t in ordered)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratings", type=int, default=1_000_000)
    p.add_argument("--per-request", type=int, default=10)
    p.add_argument("--store", default=os.environ.get("RECOMMENDER_STORE"),
                   help="an empty PostgreSQL database, postgresql://... (env RECOMMENDER_STORE); default SQLite")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        location = (args.store, Path(tmp))
        store = open_store(*location)
        start = time.perf_counter()
        upto = build(store, args.ratings, args.per_request)
        built = time.perf_counter() - start
        rng = random.Random(2)
        deadline = time.perf_counter() + 5
        quiet = posts(store, rng, lambda: time.perf_counter() > deadline)
        ctx = multiprocessing.get_context("spawn")
        started, result = ctx.Event(), ctx.Queue()
        child = ctx.Process(target=compact, args=(location, upto, started, result))
        child.start()
        started.wait()
        during = posts(store, rng, lambda: not child.is_alive())
        child.join()
        outcome = result.get()
        store.close()
        print(json.dumps({"store": store.kind, "ratings": args.ratings, "requests": upto,
                          "build_seconds": round(built, 1),
                          "compaction": outcome, "post_during_compaction": percentiles(during),
                          "post_quiet": percentiles(quiet)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
