"""Crashes, torn writes, failed retrains and concurrent writers lose no acknowledged rating."""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter

import pytest
from conftest import LiveServer

from ratings_log import RatingsLog, read_entries


def test_torn_last_line_is_reported_and_skipped_without_losing_earlier_lines(tmp_path, caplog):
    path = tmp_path / "ratings.log"
    log = RatingsLog(path)
    log.append(1, [(10, 4.0)])
    log.append(2, [(20, 3.5), (21, 1.0)])
    log.close()
    with open(path, "ab") as fh:  # a power cut in the middle of the third write
        fh.write(b'1f2e3d4c {"seq":3,"user":3,"ratin')
    with caplog.at_level("WARNING"):
        reopened = RatingsLog(path)
    assert [(e.seq, e.user, e.ratings) for e in reopened.take_recovered()] == [
        (1, 1, ((10, 4.0),)), (2, 2, ((20, 3.5), (21, 1.0)))]
    assert reopened.position().ratings == 3
    assert reopened.skipped == 1 and any("torn" in r.getMessage() for r in caplog.records)
    assert path.with_suffix(".log.torn").read_bytes().startswith(b"1f2e3d4c")
    reopened.append(4, [(40, 5.0)])  # appends start on a clean line
    reopened.close()
    assert [e.user for e in RatingsLog(path).take_recovered()] == [1, 2, 4]


def test_damaged_middle_line_is_skipped_and_the_rest_kept(tmp_path):
    path = tmp_path / "ratings.log"
    log = RatingsLog(path)
    for user in range(3):
        log.append(user, [(1, 2.0)])
    log.close()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1].replace(b"2.0", b"5.0") + lines[2])  # checksum no longer matches
    reopened = RatingsLog(path)
    assert [e.user for e in reopened.take_recovered()] == [0, 2] and reopened.skipped == 1


def test_engine_restart_after_torn_write_serves_every_acknowledged_rating(make_engine, csv_fixture, tmp_path):
    model_dir = tmp_path / "m"
    engine = make_engine(csv_fixture.path, model_dir)
    engine.add_ratings(4000, [(1, 4.0), (2, 2.5)])
    engine.close()
    with open(model_dir / "ratings.log", "ab") as fh:
        fh.write(b"0000")
    restarted = make_engine(csv_fixture.path, model_dir)
    assert [(r["movieId"], r["rating"]) for r in restarted.rated(4000)] == [(1, 4.0), (2, 2.5)]


def test_failed_background_retrain_keeps_the_previous_model_and_retries(make_engine, csv_fixture, monkeypatch):
    import engine as engine_module

    monkeypatch.setattr(engine_module, "RETRY_SECONDS", 0.5)
    engine = make_engine(csv_fixture.path, retrain="async")
    real_train = engine._train
    failures = []

    def failing_once(*args):
        if not failures:
            failures.append(1)
            raise RuntimeError("executor lost (simulated)")
        return real_train(*args)

    monkeypatch.setattr(engine, "_train", failing_once)
    engine.add_ratings(4100, [(m, 5.0) for m in csv_fixture.comedies[:4]])
    assert engine.wait_idle(120)
    health = engine.health()
    # The failed run left version 1 in service; the retry after the back-off swapped in version 2.
    assert failures == [1] and health["model_version"] == 2 and health["last_retrain_error"] is None
    assert set(m["movieId"] for m in engine.recommend(4100, 3, min_count=0)["movies"]) <= set(csv_fixture.comedies)


def test_retrain_failure_is_visible_while_the_old_model_serves(make_engine, csv_fixture, monkeypatch):
    import engine as engine_module

    monkeypatch.setattr(engine_module, "RETRY_SECONDS", 60)
    engine = make_engine(csv_fixture.path, retrain="async")
    failed = threading.Event()

    def always_failing(*args):
        failed.set()
        raise RuntimeError("executor lost (simulated)")

    monkeypatch.setattr(engine, "_train", always_failing)
    engine.add_ratings(4200, [(1, 4.5)])
    assert failed.wait(30)
    for _ in range(100):
        if engine.health()["last_retrain_error"]:
            break
        threading.Event().wait(0.05)
    health = engine.health()
    assert health["model_version"] == 1 and "executor lost" in health["last_retrain_error"]
    assert health["pending_ratings"] == 1
    assert engine.predict(4200, 1)["user_rating"] == 4.5


def test_concurrent_writers_during_retrain_lose_and_duplicate_nothing(make_engine, csv_fixture):
    engine = make_engine(csv_fixture.path, retrain="async")
    server = LiveServer(engine)
    errors, get_statuses = [], Counter()
    stop = threading.Event()

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

    try:
        engine.add_ratings(29_999, [(1, 3.0)])  # start a retrain first
        read_thread = threading.Thread(target=reader)
        read_thread.start()
        writers = [threading.Thread(target=writer, args=(c,)) for c in range(16)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        stop.set()
        read_thread.join()
        assert engine.wait_idle(180)
    finally:
        server.stop()
    assert errors == []
    assert set(get_statuses) == {200} and get_statuses[200] > 0
    entries = read_entries(engine.log.path)[0]
    logged = Counter((e.user, m) for e in entries for m, _ in e.ratings if e.user >= 30_000)
    assert len(logged) == 800 and set(logged.values()) == {1}
    for client in range(16):
        for half in range(2):
            assert len(engine.rated(30_000 + client * 2 + half)) == 25
    assert engine.health()["pending_ratings"] == 0 and engine.model_version >= 2


def test_unexpected_errors_are_json_without_stack_traces(live, monkeypatch):
    server = live()

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(server.engine, "recommend", broken)
    status, body, raw = server.get("/1/ratings/top/3")
    assert status == 500 and body == {"error": "internal error"}
    assert b"Traceback" not in raw and b"secret" not in raw


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "bearer s3cret", "Bearer s3cret extra", "Token s3cret"])
def test_malformed_authorization_headers_are_refused(live, header):
    server = live(api_token="s3cret")
    expect = 201 if header == "bearer s3cret" else 401  # the scheme is case-insensitive (RFC 7235)
    status, body, _ = server.post_json("/1/ratings", [{"movieId": 1, "rating": 4.0}], {"Authorization": header})
    assert status == expect, body
    assert server.engine.log.last_seq == (1 if expect == 201 else 0)


def test_app_never_runs_in_debug_mode(live):
    server = live()
    from app import create_app

    assert create_app(server.engine).debug is False
    assert json.loads(server.get("/health")[2])["status"] == "ok"
