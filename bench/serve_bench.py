"""Serving benchmark over HTTP: latency of the three calls, throughput, and GETs while the trainer fits.

    .venv/bin/python bench/serve_bench.py                       # starts server.py (role all) on ml-latest-small
    .venv/bin/python bench/serve_bench.py --url http://127.0.0.1:5432 --dataset datasets/ml-latest-small

Prints one JSON object.  A started server gets a temporary model folder (and
``--no-tune``, so no tuning runs in the background), so the benchmark's ratings
never reach a real store; it waits until the trainer is idle before measuring.
"Quiet" is the API with the trainer idle; "during a fit" is the same calls while
the trainer (a child process at nice 19 in role all) fits after POST
/admin/retrain.  Targets (2 cores): GET top-10 p50 <= 1 ms, GET one prediction
p50 <= 1 ms, POST 10 ratings p50 <= 20 ms, >= 400 requests/s with 8 clients,
top-10 p50 and p99 during a fit within 1.5x of quiet.
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

TARGETS = {"top10_p50_ms": 1, "predict_p50_ms": 1, "post10_p50_ms": 20, "throughput_rps": 400,
           "during_fit_p50_vs_quiet": 1.5, "during_fit_p99_vs_quiet": 1.5}


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


def health(client: Client) -> dict:
    return json.loads(client.call("GET", "/health")[2])


def wait_idle(client: Client, timeout: float = 1800) -> None:
    """Until no fit runs or is due (a live trainer fits once enough new ratings arrived)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = health(client)
        due = h["pending_ratings"] > 0 and h["next_fit"]["ratings_to_go"] == 0
        alive = h["trainer"]["state"] in ("idle", "fitting", "tuning", "failed")
        if not h["training"] and not (due and alive):
            return
        time.sleep(0.5)
    raise SystemExit("bench: the trainer did not become idle")


def run(host: str, port: int, dataset: str, requests: int, seconds: float, clients: int,
        only_gets: bool = False) -> dict:
    rng = random.Random(1)
    users, movies = catalogue(dataset)
    client = Client(host, port)
    wait_idle(client)
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

    time.sleep(2)  # the trainer polls the store every second: let a fit the posts are due start first
    wait_idle(client)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(clients) as pool:
        start = time.perf_counter()
        counts = pool.map(_throughput_worker, [(host, port, seconds, s, users) for s in range(clients)])
        elapsed = time.perf_counter() - start
    throughput = round(sum(counts) / seconds, 1)

    client = Client(host, port)  # the old connection idled past the server's keep-alive timeout
    quiet = [client.call("GET", f"/{rng.choice(users)}/ratings/top/10?min_count=25")[0] for _ in range(1000)]
    during, rounds, fit_seconds = [], 0, []
    while len(during) < 1000 and rounds < 10:
        rounds += 1
        before = health(client)["model_version"]
        client.call("POST", "/admin/retrain")
        deadline = time.monotonic() + 30
        while not health(client)["training"] and time.monotonic() < deadline:
            time.sleep(0.01)
        while (h := health(client))["training"] or h["model_version"] == before:
            # /health between every two lists would make the measured ones colder than the quiet series
            for _ in range(100):
                during.append(client.call("GET", f"/{rng.choice(users)}/ratings/top/10?min_count=25")[0])
        fit_seconds.append((h["trainer"]["last_fit"] or {}).get("seconds"))

    result = {
        "get_top10": summary(top),
        "get_prediction": summary(one),
        "post_10_ratings": summary(posts),
        "throughput": {"clients": clients, "seconds": seconds, "requests": sum(counts),
                       "requests_per_s": throughput, "wall_s": round(elapsed, 2)},
        "get_top10_quiet": summary(quiet),
        "get_top10_during_fit": summary(during),
        "fit_rounds": rounds,
        "fit_seconds": fit_seconds,
        "cpus": os.cpu_count(),
    }
    q, d = result["get_top10_quiet"], result["get_top10_during_fit"]
    measured = {"top10_p50_ms": result["get_top10"]["p50_ms"], "predict_p50_ms": result["get_prediction"]["p50_ms"],
                "post10_p50_ms": result["post_10_ratings"]["p50_ms"], "throughput_rps": throughput,
                "during_fit_p50_vs_quiet": round(d["p50_ms"] / q["p50_ms"], 2) if d.get("n") else None,
                "during_fit_p99_vs_quiet": round(d["p99_ms"] / q["p99_ms"], 2) if d.get("n") else None}
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
    p.add_argument("--server-args", default="--no-tune", help="server.py flags when the bench starts it "
                                                                "(default --no-tune: no tuning in the background)")
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
            proc, port = start_server(model_dir, *args.server_args.split(), dataset=args.dataset)
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
