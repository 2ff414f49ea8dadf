"""What filters, rules and explanations cost a top-10, over HTTP, against the same list without them, in one run.

    .venv/bin/python bench/lists.py [--requests 2000] [--rounds 3]

Starts ``server.py`` (role all, ``--no-tune``) on ml-latest-small in a temporary model folder and waits for
the first version and an idle trainer; starts a second, API-only process on a copy of that version with a
store of its own (no rules, nobody's hidden movies); then gives the first process's users 50 hidden movies
each (POST /<user>/hidden) and 40 operators' rules (hidden and expiring movies, PUT /admin/movies).  Each
timed step picks one user and asks for every kind once, in a shuffled order, on one keep-alive
connection per process (one without rules, one with), so a drift of the machine's speed hits every kind alike:

* ``baseline``: ``/<user>/ratings/top/10`` from the process with no rule and no hidden movie;
* ``plain``: the same call where the rules and hidden movies exist (they apply to every list);
* ``filtered``: ``plain`` with a 1,000-id ``exclude`` and two genres (``genre=Drama|Comedy``);
* ``explained``: ``plain`` with ``explain=1``;
* ``padded``: ``plain`` with an ignored parameter as long as ``filtered``'s (6.4 KB): what the longer
  request line costs the HTTP stack and the access log alone, so ``filtered_vs_padded_p50`` is the
  filters' own work.

Targets: filtered p50 within 1.3x of baseline, explained p50 within 1.5x of plain.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile

from common import DEFAULT_DATASET, Client, start_published, start_server, stop_all, summary
from serve_bench import catalogue

TARGETS = {"filtered_vs_baseline_p50": 1.3, "explained_vs_plain_p50": 1.5}
JSON = {"Content-Type": "application/json"}
KINDS = ("plain", "filtered", "explained", "padded")
OWN_STORE = {"RECOMMENDER_STORE": ""}  # each process its folder's SQLite, whatever the environment says


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    p.add_argument("--requests", type=int, default=2000, help="timed calls per kind and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="bench-lists-") as model_dir, \
            tempfile.TemporaryDirectory(prefix="bench-lists-bare-") as bare_dir:
        procs = []
        try:
            proc, port = start_published(model_dir, args.dataset)
            procs.append(proc)
            client = Client("127.0.0.1", port)
            shutil.copytree(model_dir, bare_dir, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("ratings.db*", "*.out"))
            bare, bare_port = start_server(bare_dir, role="api", env=OWN_STORE)
            procs.append(bare)
            clients = {"baseline": Client("127.0.0.1", bare_port)} | {k: client for k in KINDS}
            users, movies = catalogue(args.dataset)
            for user in users:
                client.call("POST", f"/{user}/hidden", json.dumps(rng.sample(movies, 50)).encode(), JSON)
            for movie in rng.sample(movies[:300], 40):
                rule = {"hidden": True} if movie % 2 else {"available_from": "2031-01-01"}
                client.call("PUT", f"/admin/movies/{movie}", json.dumps(rule).encode(), JSON)
            exclude = ",".join(str(m) for m in rng.sample(movies, 1000))  # ids the catalogue has: real work
            filtered = f"&exclude={exclude}&genre=Drama|Comedy"
            extras = {"baseline": "", "plain": "", "filtered": filtered, "explained": "&explain=1",
                      "padded": "&pad=" + "9" * (len(filtered) - len("&pad="))}
            timed: dict[str, list[float]] = {k: [] for k in extras}
            order = list(extras)
            for step in range(200 + args.requests * args.rounds):  # the first 200 steps warm up
                user = rng.choice(users)
                rng.shuffle(order)
                for kind in order:
                    elapsed = clients[kind].call("GET", f"/{user}/ratings/top/10?min_count=25{extras[kind]}")[0]
                    if step >= 200:
                        timed[kind].append(elapsed)
            result = {"dataset": args.dataset, "requests_per_kind": args.requests * args.rounds,
                      "hidden_per_user": 50, "movie_rules": 40, "exclude_ids": 1000,
                      **{k: summary(v) for k, v in timed.items()}}
            for name, top, bottom in (("filtered_vs_baseline_p50", "filtered", "baseline"),
                                      ("filtered_vs_plain_p50", "filtered", "plain"),
                                      ("filtered_vs_padded_p50", "filtered", "padded"),
                                      ("padded_vs_plain_p50", "padded", "plain"),
                                      ("plain_with_rules_vs_baseline_p50", "plain", "baseline"),
                                      ("explained_vs_plain_p50", "explained", "plain")):
                result[name] = round(result[top]["p50_ms"] / result[bottom]["p50_ms"], 3)
            result["targets"] = TARGETS
            result["met"] = {k: result[k] <= v for k, v in TARGETS.items()}
        finally:
            stop_all(procs)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
