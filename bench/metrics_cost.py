"""What /metrics costs each request (target < 20 us); one JSON line.

    .venv/bin/python bench/metrics_cost.py --model-dir models/ml-latest-small [--requests 20000]

Two measures on a published version: the per-request work alone (the two
hooks' counter and histogram updates), and whole requests through the Flask app
(its test client, no sockets, so the difference is not lost in network noise)
with the hooks on and off, interleaved in rounds so drift hits both alike.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app import _count, _start_clock, create_app  # noqa: E402
from serving.recommender import Recommender  # noqa: E402

ROUTE = "/1/ratings/top/10?min_count=25"


def per_request_seconds(client, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        client.get(ROUTE)
    return (time.perf_counter() - start) / n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--requests", type=int, default=20000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        shutil.copytree(args.model_dir, folder, ignore=shutil.ignore_patterns("*.lock", "*.out"))
        recommender = Recommender(folder).start(watch=False)
        on = create_app(recommender)
        off = create_app(recommender)
        off.before_request_funcs[None].remove(_start_clock)
        off.after_request_funcs[None].remove(_count)
        metrics = on.extensions["metrics"]
        n = 200_000
        start = time.perf_counter()
        for _ in range(n):
            metrics.observe("/<user_id>/ratings/top/<count>", "GET", 200, 0.001)
        observe_us = (time.perf_counter() - start) / n * 1e6
        clients = {"on": on.test_client(), "off": off.test_client()}
        for client in clients.values():
            per_request_seconds(client, 500)  # warm up
        rounds: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(10):
            for name, client in clients.items():
                rounds[name].append(per_request_seconds(client, args.requests // 10) * 1e6)
        recommender.close()
    on_us, off_us = statistics.median(rounds["on"]), statistics.median(rounds["off"])
    print(json.dumps({"observe_us": round(observe_us, 2), "request_with_metrics_us": round(on_us, 1),
                      "request_without_metrics_us": round(off_us, 1), "cost_per_request_us": round(on_us - off_us, 1),
                      "target_us": 20}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
