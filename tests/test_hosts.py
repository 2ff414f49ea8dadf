"""Several hosts on one PostgreSQL store: a trainer and three API processes, each with a model folder of its
own (no shared disk), on a real PostgreSQL server on loopback.

The folders stand for hosts: nothing reaches an API process but the database and
its own folder, into which it copies each published version from the database.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
from collections import Counter

from processes import post_ratings, request

from storage.postgres import PostgresStore
from storage.shipping import SharedVersions

ON_REQUEST_ONLY = ("--retrain-after", "0", "--retrain-interval", "0")  # the trainer fits when asked


def test_a_trainer_and_three_api_hosts_share_one_postgresql_store(servers, postgres, csv_fixture, tmp_path):
    url = postgres.create_database()
    env = {"RECOMMENDER_STORE": url}  # the environment, not argv: the URL holds a password
    trainer = servers(tmp_path / "trainer-host", *ON_REQUEST_ONLY, role="trainer", env=env)  # has version 1, of SQLite
    hosts = []
    for name in "abc":
        (tmp_path / f"{name}-host").mkdir()  # an empty folder: the version comes from the database
        hosts.append(servers(tmp_path / f"{name}-host", role="api", env=env))
    a, b, c = hosts
    report = {"served_valid_rmse": 0.8123, "default_valid_rmse": 0.83, "fits": 16, "n_valid": 280}
    (tmp_path / "trainer-host" / "tune.json").write_text(json.dumps(report))  # the trainer host's last tuning
    for api in hosts:  # version 1 was fitted on the fixture's SQLite store: the trainer fits 2 on this one
        api.wait_for("model version 2 in service", 120)
        assert api.get("/health")[1]["model_version"] == 2
    probe = PostgresStore(url)
    assert SharedVersions(probe).newest() == 2  # version 1 never went to the database
    probe.close()

    # Read your writes across hosts: a GET on B and on C right after a POST on A was acknowledged.
    assert post_ratings(a.port, 7100, [(m, 5.0) for m in csv_fixture.dramas[:4]])[0] == 201
    for api in (b, c):
        top = api.get("/7100/ratings/top/3?min_count=0")[1]
        assert "fallback" not in top and {m["movieId"] for m in top["movies"]} <= set(csv_fixture.dramas)
        assert api.get(f"/7100/ratings/{csv_fixture.dramas[0]}")[1]["user_rating"] == 5.0

    # A new version reaches all three hosts, trained on what was posted.
    assert request(b.port, "POST", "/admin/retrain")[0] == 202
    for api in hosts:
        api.wait_for("model version 3 in service", 120)
    assert all(api.get("/health")[1]["pending_ratings"] == 0 for api in hosts)
    validation = c.get("/status.json")[1]["validation"]  # the figures came with the version, not a file
    assert validation["served_valid_rmse"] == 0.8123 and not (tmp_path / "c-host" / "tune.json").exists()

    # Concurrent POSTs on all three, C killed (kill -9) in the middle; then everyone re-rates on A and B.
    acknowledged, unanswered = Counter(), Counter()  # (user, movie, rating) -> count
    lock, midway, killed = threading.Lock(), threading.Event(), threading.Event()
    after_kill = threading.Barrier(7)  # six writers and the test

    def writer(client: int) -> None:
        user = 7200 + client
        for k in range(12):  # phase 1: movie k+1 rated 1.0, on A, B and C in turn
            api = hosts[k % 3]
            if api is c and killed.is_set():
                continue
            try:
                status = post_ratings(api.port, user, [(k + 1, 1.0)])[0]
            except (OSError, http.client.HTTPException):  # C died under this request: not acknowledged
                status = None
            with lock:
                (acknowledged if status == 201 else unanswered)[(user, k + 1, 1.0)] += 1
                if sum(acknowledged.values()) >= 30:
                    midway.set()
        after_kill.wait(60)
        for k in range(12):  # phase 2: every movie re-rated 4.5, on A and B
            status = post_ratings(hosts[k % 2].port, user, [(k + 1, 4.5)])[0]
            with lock:
                (acknowledged if status == 201 else unanswered)[(user, k + 1, 4.5)] += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    assert midway.wait(60)
    c.stop(signal.SIGKILL)
    killed.set()
    after_kill.wait(60)
    for t in threads:
        t.join()
    assert sum(1 for (_, _, r), n in unanswered.items() if r == 4.5) == 0  # A and B answered every request
    store = PostgresStore(url)
    stored = Counter((e.user, m, r) for e in store.entries() if e.user >= 7200 for m, r in e.ratings)
    assert all(stored[key] == 1 for key in acknowledged)  # every acknowledged request, once
    assert all(stored[key] <= 1 for key in unanswered)  # one C died under may be there (or not), once
    for api in (a, b):  # the latest rating wins everywhere
        for user in range(7200, 7206):
            shown = {r["movieId"]: r["rating"] for r in api.get(f"/{user}/ratings")[1]["ratings"]}
            assert shown == {m: 4.5 for m in range(1, 13)}

    # PostgreSQL stopped in the middle of a POST burst: POSTs answer 503 and store nothing, GETs answer from
    # memory; once it is back, POSTs succeed again by themselves (no restart of anything).
    going, refused, back = threading.Event(), threading.Event(), threading.Event()
    acked, last, refusals, errors = Counter(), {}, Counter(), []

    def burst(client: int) -> None:
        user, k, after = 7300 + client, 0, 0
        while after < 5 and k < 20_000:
            k += 1
            rating = 0.5 + k % 10 / 2
            status, body = post_ratings((a, b)[k % 2].port, user, [(1, rating), (2, rating)])  # two ratings a request
            if status == 201:
                with lock:
                    acked[user] += 1
                    last[user] = rating
                    if sum(acked.values()) >= 8:
                        going.set()
                after += back.is_set()
            elif status == 503:
                refusals[body["error"]] += 1
                refused.set()
                back.wait(0.01)  # no busy loop while the database is away
            else:
                errors.append((status, body))

    writers = [threading.Thread(target=burst, args=(i,)) for i in range(4)]
    for t in writers:
        t.start()
    assert going.wait(60)
    postgres.stop()
    assert refused.wait(60)
    for api in (a, b):
        status, top = api.get("/7100/ratings/top/3?min_count=0")
        assert status == 200 and {m["movieId"] for m in top["movies"]} <= set(csv_fixture.dramas)
        health = api.get("/health")[1]
        assert health["status"] == "degraded" and "PostgreSQL" in health["store_error"]
    trainer.wait_for("no fit starts until it answers", 30)  # the trainer waits for the database too
    postgres.start()
    back.set()
    for t in writers:
        t.join(120)
    assert errors == [] and all("nothing was saved" in message for message in refusals)
    assert all(n >= 5 for n in acked.values()) and len(acked) == 4  # writes came back by themselves
    store.close()
    store = PostgresStore(url)  # the test's own connections died with the server
    entries = [e for e in store.entries() if e.user >= 7300]
    assert all(len(e.ratings) == 2 for e in entries)  # nothing half-stored
    stored = Counter(e.user for e in entries)
    # Every acknowledged request is stored; at most the one each writer had in flight when the server
    # stopped may be stored without its answer (committed, then the connection was cut).
    assert all(acked[u] <= stored[u] <= acked[u] + 1 for u in acked)
    for api in (a, b):
        assert all(api.get(f"/{u}/ratings")[1]["ratings"][0]["rating"] == last[u] for u in acked)
        assert api.get("/health")[1]["status"] == "ok"
    # The trainer went on: a fit asked for now includes the burst and reaches both hosts.
    assert request(a.port, "POST", "/admin/retrain")[0] == 202
    for api in (a, b):
        api.wait_for("model version 4 in service", 120)
    assert "the ratings store answers again" in trainer.output()
    for api in (a, b):  # the outage is said once a process, not at every version poll
        assert api.output().count("answering from memory until it is back") >= 1
        assert "could not copy the store's current model version" not in api.output()
    assert SharedVersions(store).current() == 4 and a.get("/health")[1]["pending_ratings"] == 0
    store.close()


def test_a_bad_store_url_or_password_stops_every_role_in_one_line(postgres, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, free_port
    from pgserver import PASSWORD

    database = postgres.create_database()
    cases = {
        database.replace(PASSWORD, "wrong"): "password authentication failed",
        database.rsplit("/", 1)[0] + "/no_such_db": 'database "no_such_db" does not exist',
        f"postgresql://x:y@127.0.0.1:{free_port()}/db": "Connection refused",
        "mysql://x@127.0.0.1/db": "not a store this service knows",
    }
    for role in ("api", "trainer"):
        for url, reason in cases.items():
            out = subprocess.run([sys.executable, "server.py", "--role", role, "--model-dir", str(tmp_path / role),
                                  "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=60,
                                 env={**__import__("os").environ, "RECOMMENDER_STORE": url})
            assert out.returncode == 2 and out.stderr.count("\n") == 1 and reason in out.stderr, (role, out.stderr)
            assert "wrong" not in out.stderr and "Traceback" not in out.stdout + out.stderr
            assert "Spark" not in out.stdout  # refused before anything starts
