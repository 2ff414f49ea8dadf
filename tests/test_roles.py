"""The roles as separate processes on one model folder: API processes without a JVM, one trainer, shared store.

Every process here is a real ``server.py``: API processes (``--role api``) and a
trainer (``--role trainer``) on one folder, as on one host behind a load balancer.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from conftest import ROOT
from processes import post_ratings, request, until

from server import descendants
from storage.sqlite import SQLiteStore

ON_REQUEST_ONLY = ("--retrain-after", "0", "--retrain-interval", "0")  # the trainer fits when asked, not by policy


def _post(port: int, user: int, pairs: list[tuple[int, float]]) -> int:
    return post_ratings(port, user, pairs)[0]


def _trainer_idle(api, pid: int) -> bool:
    trainer = api.get("/health")[1]["trainer"]
    return trainer["pid"] == pid and trainer["state"] == "idle"


def test_two_api_processes_and_a_trainer_share_one_folder(servers, csv_fixture, tmp_path):
    folder = tmp_path / "m"
    trainer = servers(folder, *ON_REQUEST_ONLY, role="trainer")
    a = servers(folder, role="api", python_args=("-X", "importtime"))  # every import it makes goes to its log
    b = servers(folder, role="api")

    # An API process loads no Spark and starts no JVM.
    imports = a.output()
    assert "import time:" in imports and "flask" in imports and "numpy" in imports
    assert "pyspark" not in imports and "py4j" not in imports
    assert not descendants(a.proc.pid) and not descendants(b.proc.pid)
    assert "libjvm" not in Path(f"/proc/{a.proc.pid}/maps").read_text()

    # One trainer per folder: a second is refused in one line, before Spark starts.
    out = subprocess.run([sys.executable, "server.py", "--role", "trainer", "--model-dir", str(folder),
                          "--dataset", str(csv_fixture.path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"another trainer (pid {trainer.proc.pid}) already trains in {folder}" in out.stderr
    assert "Spark" not in out.stdout + out.stderr
    until(lambda: _trainer_idle(a, trainer.proc.pid), 120, "the trainer to be up")

    # Read your writes across processes: a GET on B right after a POST on A was acknowledged.
    assert b.get("/6200/ratings/top/3?min_count=0")[1]["fallback"] == "popular"
    assert _post(a.port, 6200, [(m, 5.0) for m in csv_fixture.dramas[:4]]) == 201
    top = b.get("/6200/ratings/top/3?min_count=0")[1]
    assert "fallback" not in top and {m["movieId"] for m in top["movies"]} <= set(csv_fixture.dramas)
    assert b.get(f"/6200/ratings/{csv_fixture.dramas[0]}")[1]["user_rating"] == 5.0

    # Concurrent POSTs on both, re-rating the same movies: each acknowledged request stored once, latest wins.
    acknowledged, latest, failures = Counter(), {}, []

    def writer(client: int) -> None:
        user = 6300 + client
        for k in range(24):
            port = (a, b)[k % 2].port
            movie, rating = k % 6 + 1, 0.5 + (k * 7 + client) % 10 / 2
            status = _post(port, user, [(movie, rating)])
            if status == 201:
                acknowledged[user] += 1
                latest[(user, movie)] = rating  # this writer's later acknowledged rating of the movie
            else:
                failures.append(status)

    threads = [threading.Thread(target=writer, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and sum(acknowledged.values()) == 8 * 24
    store = SQLiteStore(folder / "ratings.db")
    entries = [e for e in store.entries() if e.user >= 6300]
    store.close()
    assert Counter(e.user for e in entries) == acknowledged
    assert len({e.seq for e in entries}) == len(entries)
    for api in (a, b):
        for client in range(8):
            shown = {r["movieId"]: r["rating"] for r in api.get(f"/{6300 + client}/ratings")[1]["ratings"]}
            assert shown == {m: r for (u, m), r in latest.items() if u == 6300 + client}

    # A new version while both serve a load: no failed request, and both switch to it.
    statuses, stop = Counter(), threading.Event()

    def load(port: int) -> None:  # a steady load (about 200 requests/s per process) that leaves the trainer a core
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop.wait(0.005):
            conn.request("GET", "/6200/ratings/top/10?min_count=0")
            response = conn.getresponse()
            version = json.loads(response.read()).get("model_version")
            statuses[(response.status, version)] += 1
        conn.close()

    loaders = [threading.Thread(target=load, args=(api.port,)) for api in (a, b)]
    for t in loaders:
        t.start()
    assert request(a.port, "POST", "/admin/retrain")[0] == 202
    for api in (a, b):
        api.wait_for("model version 2 in service", 120)
    stop.set()
    for t in loaders:
        t.join()
    # How fast both switch is bench/replicas.py's to measure (0.84-1.1 s there), not a timed assertion here.
    assert {status for status, _ in statuses} == {200} and statuses[(200, 2)] > 0
    assert b.get("/health")[1]["pending_ratings"] == 0  # the new version was trained on everything posted

    # Ctrl-C stops a trainer cleanly (the SparkContext puts a SIGINT handler of its own in place); the API
    # processes keep serving and say so.  (A trainer killed mid-fit: tests/test_server.py.)
    assert trainer.stop(signal.SIGINT) == 0
    assert "trainer stopped" in trainer.output() and "Traceback" not in trainer.output()
    assert a.get("/health")[1]["trainer"]["state"] == "stopped"
    assert b.get("/6200/ratings/top/3?min_count=0")[0] == 200


def test_sigkill_of_one_api_process_during_a_burst_loses_nothing(servers, tmp_path):
    folder = tmp_path / "m"
    a = servers(folder, role="api")
    b = servers(folder, role="api")
    acknowledged, on_b, killed, half = [], Counter(), threading.Event(), threading.Event()
    lock = threading.Lock()

    def writer(client: int) -> None:
        for k in range(40):
            api = (a, b)[k % 2]
            if api is a and killed.is_set():
                continue
            user, movie = 6500 + client, k + 1
            try:
                status = _post(api.port, user, [(movie, 4.0)])
            except (OSError, http.client.HTTPException):  # A died under this request: no whole answer came back
                continue
            if api is b:
                on_b[status] += 1
            if status == 201:
                with lock:
                    acknowledged.append((user, movie))
                    if len(acknowledged) >= 60:
                        half.set()

    threads = [threading.Thread(target=writer, args=(c,)) for c in range(6)]
    for t in threads:
        t.start()
    assert half.wait(60)
    a.stop(signal.SIGKILL)
    killed.set()
    for t in threads:
        t.join()
    assert set(on_b) == {201} and on_b[201] == 6 * 20  # B answered every request sent to it
    for user in range(6500, 6506):
        stored = {r["movieId"] for r in b.get(f"/{user}/ratings")[1]["ratings"]}
        assert {m for u, m in acknowledged if u == user} <= stored
    assert b.get("/health")[0] == 200
