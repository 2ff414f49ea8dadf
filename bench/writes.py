"""POSTs a second with many concurrent clients on 1 and 3 API processes, and the check that every acknowledged
request is stored once; optionally against another checkout of the project in the same run.

    .venv/bin/python bench/writes.py [--store postgresql://USER:PASSWORD@HOST:PORT/DATABASE] [--clients 16]
                                     [--seconds 10] [--rounds 2] [--baseline DIR] [--dataset DIR]

A trainer (``--no-tune``) publishes one version, then stops: no fit runs during the load.  For each
configuration (1 or 3 API processes, this checkout's code or ``--baseline``'s, e.g. ``git worktree add
/tmp/before <commit>``), ``--clients`` load processes each POST one rating of a user of their own (a new user
per request) to the API processes in turn for ``--seconds``.  With SQLite (the default) the processes of a
configuration share a copy of the published model folder and its ``ratings.db``; with ``--store`` (or
RECOMMENDER_STORE) each process has a folder of its own and the database is shared by every configuration.
Configurations are interleaved, ``--rounds`` times, so that a drift of the machine's speed hits all alike.

Each round also loads ``bench/floor_app.py`` (code ``floor``: Flask, CherryPy and TransLogger answering a POST
with nothing behind it), the ceiling of one process on this machine in that minute.

Prints one JSON object: per configuration and round, ``posts_per_s``, p50/p99 of the POSTs, the statuses
other than 201, ``commits`` and ``requests_per_commit`` (from the processes' /metrics, where the code has
them), and the store check: ``acknowledged``, ``stored_once`` (acknowledged requests found exactly once
with their rating), ``lost``, ``duplicated`` and ``stored_unacknowledged``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import DEFAULT_DATASET, ROOT, Client, start_floor, start_server, stop_all, summary

from storage.backends import open_store

JSON = {"Content-Type": "application/json"}
MOVIES = (1, 2, 3, 6, 10, 32, 50, 110, 260, 296)
USERS_PER_RUN = 10_000_000  # user ids of one configuration's run: FIRST_USER + run * this + client * CLIENT_USERS
CLIENT_USERS = 500_000
FIRST_USER = 100_000_000


def _post(args) -> tuple[list[float], list[tuple[int, int, float]], Counter]:
    """One load process: POST for ``seconds``; its latencies, what was acknowledged, other statuses."""
    ports, seconds, first_user = args
    clients = [Client("127.0.0.1", port) for port in ports]
    latencies, acked, statuses = [], [], Counter()
    deadline, k = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline:
        user, movie, rating = first_user + k, MOVIES[k % len(MOVIES)], (k % 10 + 1) / 2
        body = json.dumps([{"movieId": movie, "rating": rating}]).encode()
        ms, status, _ = clients[k % len(clients)].call("POST", f"/{user}/ratings", body, JSON, check=False)
        k += 1
        latencies.append(ms)
        if status == 201:
            acked.append((user, movie, rating))
        else:
            statuses[status] += 1
    return latencies, acked, statuses


def _commits(ports: list[int]) -> tuple[int, int] | None:
    """Write transactions and the requests they carried, summed over the processes (None: not measured)."""
    commits = requests = 0
    for port in ports:
        text = Client("127.0.0.1", port).call("GET", "/metrics")[2].decode()
        found = dict(re.findall(r"^recommender_store_(commits|grouped_requests)_total (\S+)$", text, re.M))
        if len(found) < 2:
            return None
        commits += int(float(found["commits"]))
        requests += int(float(found["grouped_requests"]))
    return commits, requests


def _check(store_url: str | None, folder: str, first_user: int, acked: list[tuple[int, int, float]]) -> dict:
    """Every acknowledged request stored exactly once, with its rating; nothing stored twice."""
    store = open_store(store_url, Path(folder))
    try:
        rows = Counter((e.user, movie, rating) for e in store.entries() if first_user <= e.user
                       < first_user + USERS_PER_RUN for movie, rating in e.ratings)
    finally:
        store.close()
    once = sum(rows[a] == 1 for a in acked)
    acked_set = set(acked)
    return {"acknowledged": len(acked), "stored_once": once, "lost": sum(rows[a] == 0 for a in acked),
            "duplicated": sum(n > 1 for n in rows.values()),
            "stored_unacknowledged": sum(1 for r in rows if r not in acked_set)}


def first_free_user(store_url: str | None, folder: Path) -> int:
    """Where this invocation's user ids start: above every user the store holds (a database shared with an
    earlier run keeps that run's)."""
    store = open_store(store_url, folder)
    try:
        return max([FIRST_USER - 1] + [e.user for e in store.entries()]) + 1
    finally:
        store.close()


def _load(ports: list[int], first_user: int, args) -> tuple[dict, list[tuple[int, int, float]], Counter]:
    """``args.clients`` load processes POSTing to ``ports`` for ``args.seconds``: the figures, what was
    acknowledged, and the other statuses."""
    with multiprocessing.get_context("spawn").Pool(args.clients) as pool:
        runs = pool.map(_post, [(ports, args.seconds, first_user + c * CLIENT_USERS) for c in range(args.clients)])
    acked = [a for r in runs for a in r[1]]
    figures = {"clients": args.clients, "posts_per_s": round(len(acked) / args.seconds, 1),
               **summary([ms for r in runs for ms in r[0]])}
    return figures, acked, sum((r[2] for r in runs), Counter())


def run(code: Path, n: int, first_user: int, folders: list[Path], args, env: dict) -> dict:
    """One configuration: ``n`` API processes of ``code`` on ``folders``, loaded for ``args.seconds`` by users
    from ``first_user`` on."""
    procs = [start_server(str(f), role="api", env=env, code=code) for f in folders]
    ports = [port for _, port in procs]
    try:
        before = _commits(ports)
        figures, acked, statuses = _load(ports, first_user, args)
        after = _commits(ports)
    finally:
        stop_all(proc for proc, _ in procs)
    row = {"code": "baseline" if code != ROOT else "this", "api_processes": n, **figures,
           "other_statuses": dict(statuses)}
    if before is not None and after is not None:
        commits, requests = after[0] - before[0], after[1] - before[1]
        row.update(commits=commits, requests_per_commit=round(requests / max(commits, 1), 2))
    row.update(_check(args.store, str(folders[0]), first_user, acked))
    return row


def floor(root: Path, args) -> dict:
    """The same load on bench/floor_app.py (one process): what the framework alone answers."""
    proc, port = start_floor(str(root))
    try:
        figures, _, _ = _load([port], 0, args)
    finally:
        stop_all([proc])
    return {"code": "floor", "api_processes": 1, **figures}


def main() -> int:
    p = argparse.ArgumentParser(description="POST throughput with concurrent clients, and nothing lost or doubled.")
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 3])
    p.add_argument("--baseline", type=Path, help="another checkout of the project, measured alike in the same run")
    p.add_argument("--store", default=os.environ.get("RECOMMENDER_STORE"),
                   help="postgresql://... (env RECOMMENDER_STORE); default: SQLite in the model folder")
    args = p.parse_args()
    env = {"RECOMMENDER_STORE": args.store or ""}  # SQLite: the folder's own, whatever the environment says
    codes = [ROOT] + ([args.baseline.resolve()] if args.baseline else [])
    result = {"store": "postgresql" if args.store else "sqlite", "seconds": args.seconds, "runs": []}
    with tempfile.TemporaryDirectory(prefix="writes-") as tmp:
        root = Path(tmp)
        published = root / "published"
        trainer, _ = start_server(str(published), "--no-tune", dataset=args.dataset, env=env)
        stop_all([trainer])
        first_user, run_no = first_free_user(args.store, published), 0
        for _ in range(args.rounds):
            result["runs"].append(floor(root, args))
            for n in args.processes:
                for code in codes:
                    shared = root / f"run-{run_no}"  # SQLite: the processes share a copy of the published folder
                    if not args.store:
                        shutil.copytree(published, shared)
                    folders = [shared if not args.store else root / f"run-{run_no}-api-{k}" for k in range(n)]
                    result["runs"].append(run(code, n, first_user + run_no * USERS_PER_RUN, folders, args, env))
                    run_no += 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
