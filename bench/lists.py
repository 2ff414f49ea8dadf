"""What filters, rules and explanations cost a top-10, over HTTP, against the same list without them, in one run.

    .venv/bin/python bench/lists.py [--requests 2000] [--rounds 3]

Starts ``server.py`` (role all, ``--no-tune``) on ml-latest-small in a temporary model folder, waits for the
first version and an idle trainer, then gives the users 50 hidden movies each (POST /<user>/hidden), 40
operators' rules (hidden and expiring movies, PUT /admin/movies) and times, interleaved round by round on
one keep-alive connection:

* ``plain``: ``/<user>/ratings/top/10`` (no filter; the rules and hidden movies still apply, as to every list);
* ``filtered``: the same with a 1,000-id ``exclude`` and two genres (``genre=Drama|Comedy``);
* ``explained``: ``plain`` with ``explain=1``;
* ``baseline``: the same ``plain`` call before any rule or hidden movie existed.

Targets: filtered p50 within 1.3x of baseline, explained p50 within 1.5x of plain.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time

from common import DEFAULT_DATASET, Client, start_server, stop_all, summary
from serve_bench import catalogue

TARGETS = {"filtered_vs_baseline_p50": 1.3, "explained_vs_plain_p50": 1.5}
JSON = {"Content-Type": "application/json"}


def _time(client: Client, paths: list[str]) -> list[float]:
    return [client.call("GET", p)[0] for p in paths]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    p.add_argument("--requests", type=int, default=2000, help="timed calls per kind and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="bench-lists-") as model_dir:
        proc, port = start_server(model_dir, "--no-tune", dataset=args.dataset)
        try:
            client = Client("127.0.0.1", port)
            while json.loads(client.call("GET", "/health")[2])["training"]:
                time.sleep(0.5)
            users, movies = catalogue(args.dataset)
            exclude = ",".join(str(m) for m in rng.sample(movies, 1000))  # ids the catalogue has: real work

            def paths(extra: str = "") -> list[str]:
                return [f"/{rng.choice(users)}/ratings/top/10?min_count=25{extra}" for _ in range(args.requests)]

            _time(client, paths()[:200])  # warm-up
            baseline = [t for _ in range(args.rounds) for t in _time(client, paths())]
            for user in users:
                client.call("POST", f"/{user}/hidden", json.dumps(rng.sample(movies, 50)).encode(), JSON)
            for movie in rng.sample(movies[:300], 40):
                rule = {"hidden": True} if movie % 2 else {"available_from": "2031-01-01"}
                client.call("PUT", f"/admin/movies/{movie}", json.dumps(rule).encode(), JSON)
            _time(client, paths()[:200])
            kinds = {"plain": "", "filtered": f"&exclude={exclude}&genre=Drama|Comedy", "explained": "&explain=1"}
            timed: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(args.rounds):  # interleaved: a drift of the machine's speed hits every kind alike
                for kind, extra in kinds.items():
                    timed[kind] += _time(client, paths(extra))
            result = {"dataset": args.dataset, "requests_per_kind": args.requests * args.rounds,
                      "hidden_per_user": 50, "movie_rules": 40, "exclude_ids": 1000,
                      "baseline": summary(baseline), **{k: summary(v) for k, v in timed.items()}}
            for name, top, bottom in (("filtered_vs_baseline_p50", "filtered", "baseline"),
                                      ("filtered_vs_plain_p50", "filtered", "plain"),
                                      ("plain_with_rules_vs_baseline_p50", "plain", "baseline"),
                                      ("explained_vs_plain_p50", "explained", "plain")):
                result[name] = round(result[top]["p50_ms"] / result[bottom]["p50_ms"], 3)
            result["targets"] = TARGETS
            result["met"] = {k: result[k] <= v for k, v in TARGETS.items()}
        finally:
            stop_all([proc])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
