"""What the ratings store costs a request, on SQLite or PostgreSQL: the freshness check every GET makes
(``last_seq``: has any process stored something since?), folding in one new request, and a POST's commit.

    .venv/bin/python bench/store_cost.py [--store postgresql://...] [--repeat 5000]

Prints one JSON object with microseconds per call (median and p99) for each, measured in this process
with the store's own code (threads: 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.backends import open_store  # noqa: E402


def timed(call, repeat: int) -> dict:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return {"p50_us": round(samples[len(samples) // 2], 1), "p99_us": round(samples[int(len(samples) * 0.99)], 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=os.environ.get("RECOMMENDER_STORE"),
                   help="postgresql://... (env RECOMMENDER_STORE); default SQLite in a temporary folder")
    p.add_argument("--repeat", type=int, default=5000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="store-cost-") as folder:
        store = open_store(args.store, Path(folder))
        try:
            seq = store.append(1, [(1, 4.0)]).seq
            result = {"store": store.kind, "freshness_check": timed(lambda: store.last_seq, args.repeat)}
            # What a GET does after another process stored one request: read what is new since.
            result["changes_after_one_request"] = timed(lambda: store.changes(seq - 1), args.repeat // 5)
            result["post_commit"] = timed(lambda: store.append(2, [(1, 3.5)]), args.repeat // 5)
        finally:
            store.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
