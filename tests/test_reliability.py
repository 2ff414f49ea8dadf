"""Failed commits, concurrent writers during a fit, and errors: no acknowledged rating is lost or doubled."""

from __future__ import annotations

import http.client
import threading
from collections import Counter

import pytest
from conftest import LiveServer


def test_a_store_failure_is_a_503_that_changes_nothing(live, csv_fixture):
    from serving.errors import InputError

    server = live()
    rec = server.recommender
    every_movie = sorted(csv_fixture.titles)
    pages = rec.store._db.execute("PRAGMA page_count").fetchone()[0]
    rec.store._db.execute(f"PRAGMA max_page_count={pages + 2}")  # the disk fills up
    with pytest.raises(InputError, match="could not be stored"):
        for user in range(50_000, 50_100):
            rec.add_ratings(user, [(m, 4.0) for m in every_movie])
    served = rec.current()
    before = (rec.store.entries(), rec.rated(1), served.counts.copy(), rec.recommend(1, 5, min_count=0))
    status, body, _ = server.post_json("/1/ratings", [{"movieId": m, "rating": 0.5} for m in every_movie])
    assert status == 503 and "could not be stored" in body["error"]
    after = (rec.store.entries(), rec.rated(1), served.counts, rec.recommend(1, 5, min_count=0))
    assert after[0] == before[0] and after[1] == before[1] and (after[2] == before[2]).all()
    assert after[3] == before[3]
    rec.store._db.execute("PRAGMA max_page_count=1073741823")  # space again: the same request is taken
    assert server.post_json("/1/ratings", [{"movieId": m, "rating": 0.5} for m in every_movie])[0] == 201
    assert {r for _, r in rec.rated(1)} == {0.5}


@pytest.mark.slow  # a fit while 16 clients write
def test_concurrent_writers_during_a_fit_lose_and_duplicate_nothing(make_engine, make_recommender, csv_fixture):
    engine = make_engine(csv_fixture.path)
    rec = make_recommender(engine.model_dir)
    server = LiveServer(rec)
    errors, get_statuses = [], Counter()
    stop, fitting = threading.Event(), threading.Event()

    def writer(client: int):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for k in range(50):
            user, movie = 30_000 + client * 2 + k // 25, k % 25 + 1
            conn.request("POST", f"/{user}/ratings", body=f"{movie},{1 + k % 9 / 2}".encode(),
                         headers={"Content-Type": "text/plain"})
            response = conn.getresponse()
            response.read()
            if response.status != 201:
                errors.append(response.status)
        conn.close()

    def reader():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        while not stop.is_set():
            conn.request("GET", "/1/ratings/top/5?min_count=0")
            response = conn.getresponse()
            response.read()
            get_statuses[response.status] += 1
        conn.close()

    def fit():
        fitting.set()
        engine.fit_and_publish()  # reads the store while the writers append

    try:
        rec.add_ratings(29_999, [(1, 3.0)])
        fitter = threading.Thread(target=fit)
        fitter.start()
        assert fitting.wait(10)
        read_thread = threading.Thread(target=reader)
        read_thread.start()
        writers = [threading.Thread(target=writer, args=(c,)) for c in range(16)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        fitter.join(180)
        rec.refresh()  # the new version, with what it did not see folded in on top
        stop.set()
        read_thread.join()
    finally:
        server.stop()
    assert errors == []
    assert set(get_statuses) == {200} and get_statuses[200] > 0
    entries = rec.store.entries()
    logged = Counter((e.user, m) for e in entries for m, _ in e.ratings if e.user >= 30_000)
    assert len(logged) == 800 and set(logged.values()) == {1}
    for client in range(16):
        for half in range(2):
            assert len(rec.rated(30_000 + client * 2 + half)) == 25
    assert rec.version == 2 and sorted(e.seq for e in entries) == list(range(1, 802))


def test_unexpected_errors_are_json_without_stack_traces(live, monkeypatch):
    server = live()

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(server.recommender, "recommend", broken)
    status, body, raw = server.get("/1/ratings/top/3")
    assert status == 500 and body == {"error": "internal error"}
    assert b"Traceback" not in raw and b"secret" not in raw


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "bearer s3cret", "Bearer s3cret extra", "Token s3cret"])
def test_malformed_authorization_headers_are_refused(live, header):
    server = live(api_token="s3cret")
    expect = 201 if header == "bearer s3cret" else 401  # the scheme is case-insensitive (RFC 7235)
    status, body, _ = server.post_json("/1/ratings", [{"movieId": 1, "rating": 4.0}], {"Authorization": header})
    assert status == expect, body
    assert server.recommender.store.last_seq == (1 if expect == 201 else 0)
