"""Serving benchmark over HTTP: latency of the three calls, throughput, and GETs during a retrain.

    .venv/bin/python bench/serve_bench.py                       # starts server.py on ml-latest-small
    .venv/bin/python bench/serve_bench.py --url http://127.0.0.1:5432 --dataset datasets/ml-latest-small

Prints one JSON object.  A started server gets a temporary model folder, so the
benchmark's ratings never reach a real ratings log.  Targets (2 cores): GET
top-10 p50 <= 5 ms and p99 <= 20 ms, GET one prediction p50 <= 3 ms, POST 10
ratings p50 <= 20 ms, >= 400 requests/s with 8 clients, GET p99 <= 100 ms
during a retrain.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from common import DEFAULT_DATASET, Client, start_server, summary, tree_rss_mb

TARGETS = {"top10_p50_ms": 5, "top10_p99_ms": 20, "predict_p50_ms": 3, "post10_p50_ms": 20,
           "throughput_rps": 400, "get_p99_during_retrain_ms": 100}


def _throughput_worker(args):
    host, port, seconds, seed, users = args
    rng = random.Random(seed)
    client = Client(host, port)
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        client.call("GET", f"/{rng.choice(users)}/ratings/top/10?min_count=25")
        done += 1
    return done


def catalogue(dataset: str) -> tuple[list[int], list[int]]:
    """User and movie ids to query, read without holding the ratings file in memory."""
    with open(Path(dataset) / "movies.csv", newline="") as fh:
        movies = [int(row[0]) for row in list(csv.reader(fh))[1:]]
    users: set[int] = set()
    with open(Path(dataset) / "ratings.csv") as fh:
        next(fh)
        for line in fh:
            users.add(int(line.split(",", 1)[0]))
    return sorted(users), movies


def run(host: str, port: int, dataset: str, requests: int, seconds: float, clients: int,
        only_gets: bool = False) -> dict:
    rng = random.Random(1)
    users, movies = catalogue(dataset)
    client = Client(host, port)
    for _ in range(50):  # warm-up
        client.call("GET", f"/{rng.choice(users)}/ratings/top/10?min_count=25")

    top = [client.call("GET", f"/{rng.choice(users)}/ratings/top/10?min_count=25")[0] for _ in range(requests)]
    one = [client.call("GET", f"/{rng.choice(users)}/ratings/{rng.choice(movies)}")[0] for _ in range(requests)]
    if only_gets:
        return {"get_top10": summary(top), "get_prediction": summary(one), "users": len(users),
                "movies": len(movies)}

    posts = []
    for i in range(min(requests, 300)):
        body = "\n".join(f"{m},{rng.randint(1, 10) / 2}" for m in rng.sample(movies, 10)).encode()
        posts.append(client.call("POST", f"/{1_000_000 + i}/ratings", body, {"Content-Type": "text/plain"})[0])

    # Let the retrains the posts caused finish before measuring throughput.
    while json.loads(client.call("GET", "/health")[2])["training"]:
        time.sleep(0.2)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(clients) as pool:
        start = time.perf_counter()
        counts = pool.map(_throughput_worker, [(host, port, seconds, s, users) for s in range(clients)])
        elapsed = time.perf_counter() - start
    throughput = round(sum(counts) / seconds, 1)

    client = Client(host, port)  # the old connection idled past the server's keep-alive timeout
    during, rounds = [], 0
    while len(during) < 500 and rounds < 10:
        rounds += 1
        body = "\n".join(f"{m},4" for m in rng.sample(movies, 10)).encode()
        client.call("POST", f"/{2_000_000 + rounds}/ratings", body, {"Content-Type": "text/plain"})
        deadline = time.monotonic() + 30
        while not json.loads(client.call("GET", "/health")[2])["training"] and time.monotonic() < deadline:
            time.sleep(0.01)
        while json.loads(client.call("GET", "/health")[2])["training"]:
            during.append(client.call("GET", f"/{rng.choice(users)}/ratings/top/10?min_count=25")[0])

    result = {
        "get_top10": summary(top),
        "get_prediction": summary(one),
        "post_10_ratings": summary(posts),
        "throughput": {"clients": clients, "seconds": seconds, "requests": sum(counts),
                       "requests_per_s": throughput, "wall_s": round(elapsed, 2)},
        "get_top10_during_retrain": summary(during),
        "retrain_rounds": rounds,
        "cpus": os.cpu_count(),
    }
    measured = {"top10_p50_ms": result["get_top10"]["p50_ms"], "top10_p99_ms": result["get_top10"]["p99_ms"],
                "predict_p50_ms": result["get_prediction"]["p50_ms"],
                "post10_p50_ms": result["post_10_ratings"]["p50_ms"], "throughput_rps": throughput,
                "get_p99_during_retrain_ms": result["get_top10_during_retrain"].get("p99_ms")}
    result["targets"] = {
        key: {"target": target, "measured": measured[key],
              "met": measured[key] is not None and (measured[key] >= target if key == "throughput_rps"
                                                    else measured[key] <= target)}
        for key, target in TARGETS.items()}
    return result


def main() -> int:
    p = argparse.ArgumentParser(description="Benchmark the recommendation service over HTTP.")
    p.add_argument("--url", help="target a running server instead of starting one")
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--requests", type=int, default=2000, help="requests per latency series")
    p.add_argument("--seconds", type=float, default=10, help="throughput run length")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients for throughput")
    p.add_argument("--only-gets", action="store_true", help="measure only GET latency (and memory)")
    p.add_argument("--server-args", default="", help="extra server.py flags when the bench starts it")
    p.add_argument("--model-dir", help="model folder for the started server (default: a temporary one); "
                                       "a params.json there sets rank and iterations, and the model is kept")
    args = p.parse_args()
    proc = None
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        model_dir = args.model_dir or scratch
        if args.url:
            parsed = urlparse(args.url)
            host, port = parsed.hostname, parsed.port or 80
        else:
            proc, port = start_server(args.dataset, model_dir, *args.server_args.split())
            host = "127.0.0.1"
        try:
            result = run(host, port, args.dataset, args.requests, args.seconds, args.clients, args.only_gets)
            if proc is not None:
                result["server_rss"] = tree_rss_mb(proc.pid)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(60)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
