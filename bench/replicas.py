"""API processes side by side: start-up, memory, throughput with 1-3 of them, how fast a POST on one is seen on
another, and how fast a new model version reaches every one.

    .venv/bin/python bench/replicas.py [--dataset datasets/ml-latest-small] [--seconds 10] [--clients 4]
                                       [--store postgresql://USER:PASSWORD@HOST:PORT/DATABASE]

With the default SQLite store the processes share one model folder (one host).  With ``--store`` (or
RECOMMENDER_STORE) every process gets a model folder of its own, as on separate hosts: versions reach them
through the database.

Prints one JSON object:

* ``fresh_first_answer_s``: ``server.py`` (role all, what ``make run`` starts) on an empty model folder, from
  launch to the first 200 of ``GET /1/ratings/top/10`` (the trainer's first fit, with the default parameters;
  tuning would follow in the background: the run stops before it).
* ``api_start_first_answer_s``: ``server.py --role api`` on the published folder, launch to the first 200.
* ``api_rss_mb``: each API process's resident memory after the load.
* ``processes``: for 1, 2 and 3 API processes (and a trainer, idle), ``--clients`` load processes each sending
  requests to the API processes in turn for ``--seconds``, once per kind (``top10``: GET top-10 of a known
  user; ``prediction``: GET one movie's predicted rating; ``post``: POST one rating of a new user):
  requests/s and p50/p99 of each.
* ``post_to_visible_ms``: 200 times, a POST on the first process, then GETs of that rating on the last
  one until it shows: from the POST's answer to the first GET that shows it (``seen_on_first_get``: how
  many times that was the very first GET).
* ``publish_to_all_switched_s``: with the 3 API processes serving a light load, ``POST /admin/retrain``; from
  the new version's creation (its version.json) to the moment the last process reports it in /health, and
  failed requests during the switch.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import DEFAULT_DATASET, ROOT, Client, rss_mb, start_server, summary

ROUTE = "/{user}/ratings/top/10?min_count=25"
KINDS = ("top10", "prediction", "post")
JSON = {"Content-Type": "application/json"}


def _request(kind: str, rng: random.Random, seed: int) -> tuple[str, str, bytes | None]:
    if kind == "top10":
        return "GET", ROUTE.format(user=rng.randint(1, 610)), None
    if kind == "prediction":
        return "GET", f"/{rng.randint(1, 610)}/ratings/{rng.choice((1, 2, 3, 6, 10, 32, 50, 110, 260, 296))}", None
    body = json.dumps([{"movieId": rng.choice((1, 2, 3, 6, 10, 32, 50, 110, 260, 296)),
                        "rating": rng.randint(1, 10) / 2}]).encode()
    return "POST", f"/{1_000_000 + seed * 100_000 + rng.randint(0, 99_999)}/ratings", body


def _load(args) -> list[float]:
    ports, seconds, seed, kind = args
    rng = random.Random(seed)
    clients = [Client("127.0.0.1", port) for port in ports]
    latencies, deadline, k = [], time.perf_counter() + seconds, seed
    while time.perf_counter() < deadline:
        k += 1
        method, path, body = _request(kind, rng, seed)
        latencies.append(clients[k % len(clients)].call(method, path, body, JSON if body else None)[0])
    return latencies


def post_to_visible(ports: list[int], samples: int = 200) -> dict:
    """POST on the first process, then GET the rating on the last until it shows."""
    writer, reader = Client("127.0.0.1", ports[0]), Client("127.0.0.1", ports[-1])
    waits, first = [], 0
    for k in range(samples):
        user, rating = 3_000_000 + k, (k % 10 + 1) / 2
        writer.call("POST", f"/{user}/ratings", json.dumps([{"movieId": 1, "rating": rating}]).encode(), JSON)
        acked, gets = time.perf_counter(), 0
        while True:
            gets += 1
            if json.loads(reader.call("GET", f"/{user}/ratings/1")[2])["user_rating"] == rating:
                break
        waits.append((time.perf_counter() - acked) * 1000)
        first += gets == 1
    return {**summary(waits), "seen_on_first_get": first, "samples": samples}


def first_answer(model_dir: str, *extra: str, role: str, dataset: str | None = None,
                 env: dict | None = None) -> tuple[object, int, float]:
    """Start a server and time it from launch to its first 200 on the top-10 route."""
    start = time.perf_counter()
    proc, port = start_server(model_dir, *extra, role=role, dataset=dataset, wait_for_model=False, env=env)
    client = None
    while True:
        try:
            client = client or Client("127.0.0.1", port)
            if client.call("GET", ROUTE.format(user=1), check=False)[1] == 200:
                return proc, port, round(time.perf_counter() - start, 2)
        except OSError:
            client = None
        time.sleep(0.05)


def health(port: int) -> dict:
    return json.loads(Client("127.0.0.1", port).call("GET", "/health")[2])


def main() -> int:
    p = argparse.ArgumentParser(description="Several API processes on one model folder.")
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--seconds", type=float, default=10, help="load per process count")
    p.add_argument("--clients", type=int, default=4, help="load processes")
    p.add_argument("--store", default=os.environ.get("RECOMMENDER_STORE"),
                   help="postgresql://... (env RECOMMENDER_STORE): every process gets its own model folder")
    args = p.parse_args()
    env = {"RECOMMENDER_STORE": args.store} if args.store else {}
    procs, result = [], {"store": "postgresql" if args.store else "sqlite"}
    with tempfile.TemporaryDirectory(prefix="replicas-") as root:

        def folder(name: str) -> str:  # one folder for everyone with SQLite; one a process ("host") with a database
            return str(Path(root) / (name if args.store else "shared"))

        try:
            fresh, _, result["fresh_first_answer_s"] = first_answer(folder("trainer"), role="all", env=env,
                                                                    dataset=args.dataset)
            fresh.terminate()
            fresh.wait(120)
            api, port, result["api_start_first_answer_s"] = first_answer(folder("api-1"), role="api", env=env)
            procs.append((api, port))
            result["processes"] = []
            for n in (1, 2, 3):
                while len(procs) < n:
                    procs.append(start_server(folder(f"api-{len(procs) + 1}"), role="api", env=env))
                ports = [port for _, port in procs]
                row = {"api_processes": n, "clients": args.clients}
                for kind in KINDS:
                    ctx = multiprocessing.get_context("spawn")
                    with ctx.Pool(args.clients) as pool:
                        runs = pool.map(_load, [(ports, args.seconds, seed, kind) for seed in range(args.clients)])
                    latencies = [ms for run in runs for ms in run]
                    row[kind] = {"requests_per_s": round(len(latencies) / args.seconds, 1), **summary(latencies)}
                result["processes"].append(row)
            result["post_to_visible_ms"] = post_to_visible([port for _, port in procs])
            result["api_rss_mb"] = [rss_mb(proc.pid) for proc, _ in procs]
            result.update(publish_to_all(folder("trainer"), args.dataset, [port for _, port in procs], env))
        finally:
            for proc, _ in procs:
                proc.terminate()
                proc.wait(60)
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))
    return 0


def publish_to_all(model_dir: str, dataset: str, ports: list[int], env: dict) -> dict:
    """Start a trainer (``--no-tune``: it keeps the first version's default parameters, so it fits nothing at
    start), ask it for a fit while the API processes serve, and time the switch on every one."""
    log = open(Path(model_dir) / "trainer.out", "w")
    trainer = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--role", "trainer", "--no-tune",
                                "--retrain-after", "0", "--retrain-interval", "0", "--model-dir", model_dir,
                                "--dataset", dataset], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, **env})
    try:
        while (state := health(ports[0])["trainer"])["pid"] != trainer.pid or state["state"] != "idle":
            time.sleep(0.2)
        before = health(ports[0])["model_version"]
        failures, served, stop = [], [0], threading.Event()

        def light_load(port: int) -> None:
            client = Client("127.0.0.1", port)
            while not stop.wait(0.01):
                status = client.call("GET", ROUTE.format(user=random.randint(1, 610)), check=False)[1]
                served[0] += 1
                if status != 200:
                    failures.append(status)

        loaders = [threading.Thread(target=light_load, args=(port,)) for port in ports]
        for t in loaders:
            t.start()
        Client("127.0.0.1", ports[0]).call("POST", "/admin/retrain")
        switched = {}
        while len(switched) < len(ports):
            for port in ports:
                if port not in switched and health(port)["model_version"] > before:
                    switched[port] = time.time()
            time.sleep(0.01)
        stop.set()
        for t in loaders:
            t.join()
        version = max(health(port)["model_version"] for port in ports)
        created = json.loads((Path(model_dir) / "versions" / f"v{version:06d}" / "version.json").read_text())["created"]
        return {"publish_to_all_switched_s": round(max(switched.values()) - created, 3),
                "switch_requests": served[0], "switch_failed_requests": len(failures),
                "fit_seconds": health(ports[0])["trainer"]["last_fit"]["seconds"]}
    finally:
        trainer.terminate()
        trainer.wait(120)


if __name__ == "__main__":
    sys.exit(main())
