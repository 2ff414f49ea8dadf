"""Soak test: mixed load (90% GET, 10% POST) against a live server for a given time.

    .venv/bin/python bench/soak.py --minutes 10

Starts server.py (role all: the API and the trainer) on ml-latest-small with a
temporary model folder (fits by the retrain policy), drives it from several keep-alive clients, and prints one JSON
object: requests, errors, latency percentiles, the ratings log's entries against
the acknowledged POSTs (and every acknowledged rating read back), and the
server's resident memory and disk use (model folder, Spark checkpoint folder)
each minute.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from common import DEFAULT_DATASET, Client, start_server, summary, tree_rss_mb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from storage.sqlite import SQLiteStore  # noqa: E402


def folder_mb(folder: str) -> float:
    """What the files under ``folder`` take on disk, in MB (files removed while walking count as gone)."""
    total = 0
    for path in Path(folder).rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except FileNotFoundError:
            pass
    return round(total / 2**20, 2)


def main() -> int:
    p = argparse.ArgumentParser(description="Mixed-load soak test of the recommendation service.")
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--post-share", type=float, default=0.1)
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--pool", type=int, default=0,
                   help="POSTs rate only the N most-listed movie ids (0: any movie); a small pool makes "
                        "later posts re-rate, so the stored data stops growing and memory can be judged flat")
    p.add_argument("--server-args", default="--heap 1g", help="server.py flags (default: a fixed 1g heap)")
    args = p.parse_args()

    with open(Path(args.dataset) / "movies.csv", newline="") as fh:
        movies = [int(row[0]) for row in list(csv.reader(fh))[1:]]
    post_movies = movies[:args.pool] if args.pool else movies
    with tempfile.TemporaryDirectory(prefix="soak-") as model_dir, \
            tempfile.TemporaryDirectory(prefix="soak-checkpoints-") as checkpoints, \
            tempfile.TemporaryDirectory(prefix="soak-log-") as logs:
        # The access log grows with every request by design: it is kept out of the folders measured for disk.
        proc, port = start_server(model_dir, *args.server_args.split(), dataset=args.dataset,
                                  env={"SPARK_CHECKPOINT_DIR": checkpoints}, log=str(Path(logs) / "server.out"))
        latencies: dict[str, list[float]] = {"get": [], "post": []}
        errors: list[str] = []
        acknowledged: Counter = Counter()  # (user, pairs) of every POST answered 201
        acked_posts = [0]
        lock = threading.Lock()
        stop = threading.Event()

        def client_loop(seed: int) -> None:
            rng = random.Random(seed)
            client = Client("127.0.0.1", port)
            while not stop.is_set():
                try:
                    if rng.random() < args.post_share:
                        user = rng.randint(1, 700)
                        pairs = [(m, rng.randint(1, 10) / 2) for m in rng.sample(post_movies, rng.randint(1, 10))]
                        body = "\n".join(f"{m},{r}" for m, r in pairs).encode()
                        ms, status, data = client.call("POST", f"/{user}/ratings", body,
                                                       {"Content-Type": "text/plain"}, check=False)
                        with lock:
                            latencies["post"].append(ms)
                            if status == 201:
                                acked_posts[0] += 1
                                acknowledged[(user, tuple(pairs))] += 1
                            else:
                                errors.append(f"POST {status} {data[:100]!r}")
                    else:
                        user = rng.randint(1, 700)
                        path = (f"/{user}/ratings/top/10?min_count=25" if rng.random() < 0.7
                                else f"/{user}/ratings/{rng.choice(movies)}")
                        ms, status, data = client.call("GET", path, check=False)
                        with lock:
                            latencies["get"].append(ms)
                            if status != 200:
                                errors.append(f"GET {status} {data[:100]!r}")
                except Exception as exc:  # a dropped connection counts as an error
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    client = Client("127.0.0.1", port)

        threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(args.clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        memory = []
        while time.monotonic() - start < args.minutes * 60:
            time.sleep(min(60, args.minutes * 60 - (time.monotonic() - start)))
            n_ratings = json.loads(Client("127.0.0.1", port).call("GET", "/health")[2])["n_ratings"]
            memory.append({"minute": round((time.monotonic() - start) / 60, 2), "n_ratings": n_ratings,
                           "model_dir_mb": folder_mb(model_dir), "checkpoint_dir_mb": folder_mb(checkpoints),
                           **tree_rss_mb(proc.pid)})
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start

        # Every acknowledged (user, movie) must be in the store (compaction drops only ratings a later one
        # replaced), and the service must serve, for every rated (user, movie), the store's newest value
        # (concurrent clients may see their answers in another order than the server applied them).
        store = SQLiteStore(Path(model_dir) / "ratings.db")
        entries = store.entries()
        store.close()
        log_entries = len(entries)
        stored = {(e.user, m) for e in entries for m, _ in e.ratings}
        lost_posts = sum(1 for (user, pairs) in acknowledged for m, _ in pairs if (user, m) not in stored)
        latest = {(e.user, m): r for e in entries for m, r in e.ratings}
        client = Client("127.0.0.1", port)
        missing = [key for key, rating in latest.items()
                   if json.loads(client.call("GET", f"/{key[0]}/ratings/{key[1]}")[2])["user_rating"] != rating]
        health = json.loads(client.call("GET", "/health")[2])
        proc.terminate()
        proc.wait(120)

    for m in memory:
        m["disk_mb"] = round(m["model_dir_mb"] + m["checkpoint_dir_mb"], 2)
    after_first = [m["total_mb"] for m in memory if m["minute"] > 1.01] or [memory[-1]["total_mb"]]
    disk_after_first = [m["disk_mb"] for m in memory if m["minute"] > 1.01] or [memory[-1]["disk_mb"]]
    result = {
        "minutes": round(elapsed / 60, 2),
        "clients": args.clients,
        "server_args": args.server_args,
        "post_movie_pool": args.pool or len(movies),
        "requests": len(latencies["get"]) + len(latencies["post"]),
        "requests_per_s": round((len(latencies["get"]) + len(latencies["post"])) / elapsed, 1),
        "errors": len(errors),
        "error_samples": errors[:5],
        "get": summary(latencies["get"]),
        "post": summary(latencies["post"]),
        "acknowledged_posts": acked_posts[0],
        "log_entries": log_entries,
        "lost_posts": lost_posts,
        "rated_pairs_checked": len(latest),
        "pairs_served_wrong": len(missing),
        "final_model_version": health["model_version"],
        "memory": memory,
        "rss_growth_after_first_minute_mb": round(max(after_first) - memory[0]["total_mb"], 1),
        "disk_growth_after_first_minute_mb": round(max(disk_after_first) - memory[0]["disk_mb"], 2),
    }
    print(json.dumps(result))
    return 0 if not errors and not missing and not lost_posts else 1


if __name__ == "__main__":
    sys.exit(main())
