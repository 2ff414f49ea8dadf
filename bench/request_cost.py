"""What one request of the service costs against the framework's floor, measured in one run.

    .venv/bin/python bench/request_cost.py [--requests 2000] [--rounds 3] [--dataset DIR]

Starts ``server.py`` (role all, ``--no-tune``) on a temporary model folder and waits for the first version
and an idle trainer, then ``bench/floor_app.py`` (Flask, CherryPy and TransLogger answering a 10-item list
with nothing behind it).  Each timed step picks a user and sends every kind once, in a shuffled order, on
one keep-alive connection per process, so a drift of the machine's speed hits every kind alike:

* ``floor``: the floor app's ``GET /<user>/ratings/top/10``;
* ``top10``: ``GET /<user>/ratings/top/10?min_count=25``;
* ``prediction``: ``GET /<user>/ratings/<movie>``;
* ``movie``: ``GET /movies/1``.

Prints one JSON object: p50/p99 per kind and each kind's p50 over the floor's (target for ``top10``: 2).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile

from common import DEFAULT_DATASET, Client, start_floor, start_published, stop_all, summary

MOVIES = (1, 2, 3, 6, 10, 32, 50, 110, 260, 296)
TARGET = 2.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    p.add_argument("--requests", type=int, default=2000, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    rng = random.Random(11)
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as model_dir:
        procs = []
        try:
            proc, port = start_published(model_dir, args.dataset)
            procs.append(proc)
            service = Client("127.0.0.1", port)
            floor_proc, floor_port = start_floor(model_dir)
            procs.append(floor_proc)
            floor = Client("127.0.0.1", floor_port)
            kinds = {
                "floor": lambda u: floor.call("GET", f"/{u}/ratings/top/10")[0],
                "top10": lambda u: service.call("GET", f"/{u}/ratings/top/10?min_count=25")[0],
                "prediction": lambda u: service.call("GET", f"/{u}/ratings/{rng.choice(MOVIES)}")[0],
                "movie": lambda u: service.call("GET", "/movies/1")[0],
            }
            for _ in range(200):  # warm up: every kind's code paths and caches
                for call in kinds.values():
                    call(rng.randint(1, 610))
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(args.rounds * args.requests):
                user, order = rng.randint(1, 610), list(kinds)
                rng.shuffle(order)
                for kind in order:
                    times[kind].append(kinds[kind](user))
        finally:
            stop_all(procs)
    result = {kind: summary(values) for kind, values in times.items()}
    floor_p50 = result["floor"]["p50_ms"]
    result["vs_floor_p50"] = {k: round(result[k]["p50_ms"] / floor_p50, 3) for k in kinds if k != "floor"}
    result["target_top10_vs_floor"] = TARGET
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
