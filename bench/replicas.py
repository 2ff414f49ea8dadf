"""API processes side by side on one model folder: start-up, memory, throughput with 1-3 of them, and how fast a
new model version reaches every one.

    .venv/bin/python bench/replicas.py [--dataset datasets/ml-latest-small] [--seconds 10] [--clients 4]

Prints one JSON object:

* ``fresh_first_answer_s``: ``server.py`` (role all, what ``make run`` starts) on an empty model folder, from
  launch to the first 200 of ``GET /1/ratings/top/10`` (the trainer's first fit, with the default parameters;
  tuning would follow in the background: the run stops before it).
* ``api_start_first_answer_s``: ``server.py --role api`` on the published folder, launch to the first 200.
* ``api_rss_mb``: each API process's resident memory after the load.
* ``processes``: for 1, 2 and 3 API processes (and a trainer, idle), ``--clients`` load processes each sending
  top-10 requests to the API processes in turn for ``--seconds``: requests/s and p50/p99.
* ``publish_to_all_switched_s``: with the 3 API processes serving a light load, ``POST /admin/retrain``; from
  the new version's creation (its version.json) to the moment the last process reports it in /health, and
  failed requests during the switch.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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


def _load(args) -> list[float]:
    ports, seconds, seed = args
    rng = random.Random(seed)
    clients = [Client("127.0.0.1", port) for port in ports]
    latencies, deadline, k = [], time.perf_counter() + seconds, seed
    while time.perf_counter() < deadline:
        k += 1
        latencies.append(clients[k % len(clients)].call("GET", ROUTE.format(user=rng.randint(1, 610)))[0])
    return latencies


def first_answer(model_dir: str, *extra: str, role: str, dataset: str | None = None) -> tuple[object, int, float]:
    """Start a server and time it from launch to its first 200 on the top-10 route."""
    start = time.perf_counter()
    proc, port = start_server(model_dir, *extra, role=role, dataset=dataset, wait_for_model=False)
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
    args = p.parse_args()
    procs, result = [], {}
    with tempfile.TemporaryDirectory(prefix="replicas-") as model_dir:
        try:
            fresh, _, result["fresh_first_answer_s"] = first_answer(model_dir, role="all", dataset=args.dataset)
            fresh.terminate()
            fresh.wait(120)
            api, port, result["api_start_first_answer_s"] = first_answer(model_dir, role="api")
            procs.append((api, port))
            result["processes"] = []
            for n in (1, 2, 3):
                while len(procs) < n:
                    procs.append(start_server(model_dir, role="api"))
                ports = [port for _, port in procs]
                ctx = multiprocessing.get_context("spawn")
                with ctx.Pool(args.clients) as pool:
                    runs = pool.map(_load, [(ports, args.seconds, seed) for seed in range(args.clients)])
                latencies = [ms for run in runs for ms in run]
                result["processes"].append({"api_processes": n, "clients": args.clients,
                                            "requests_per_s": round(len(latencies) / args.seconds, 1),
                                            "top10": summary(latencies)})
            result["api_rss_mb"] = [rss_mb(proc.pid) for proc, _ in procs]
            result.update(publish_to_all(model_dir, args.dataset, [port for _, port in procs]))
        finally:
            for proc, _ in procs:
                proc.terminate()
                proc.wait(60)
        shutil.rmtree(model_dir, ignore_errors=True)
    print(json.dumps(result))
    return 0


def publish_to_all(model_dir: str, dataset: str, ports: list[int]) -> dict:
    """Start a trainer (``--no-tune``: it keeps the first version's default parameters, so it fits nothing at
    start), ask it for a fit while the API processes serve, and time the switch on every one."""
    log = open(Path(model_dir) / "trainer.out", "w")
    trainer = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--role", "trainer", "--no-tune",
                                "--retrain-after", "0", "--retrain-interval", "0", "--model-dir", model_dir,
                                "--dataset", dataset], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
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
