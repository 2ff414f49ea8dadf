"""Hostile clients against a real ``server.py --role api``: slow connections, the largest POSTs, deep JSON,
made-up methods and (with PostgreSQL) a /health flood.  Run by hand; prints one JSON object.

    .venv/bin/python bench/hostile.py [--threads 16] [--post-ratings 1000] [--big-ratings 20000263]
    .venv/bin/python bench/hostile.py --pg                                # (e) on a throwaway PostgreSQL
    .venv/bin/python bench/hostile.py --store postgresql://USER:PASSWORD@127.0.0.1:PORT/DATABASE

No Spark: each API process serves a version published straight into a temporary model folder, with random
NumPy factors shaped like a catalogue (``shapes``): ml-latest-small (9,742 movies, 610 users, 100,836
ratings) and the 20M synthetic one (27,027 movies, 137,931 users; ``--big-ratings`` ratings in the users'
histories, 20,000,263 by default: fewer is said in the output).  Everything runs on 127.0.0.1, every loop is
bounded in count and time, and the servers and folders go at the end.

* ``slow_connections`` (ml-latest-small): ``--threads`` sockets (the API's worker threads, the same number)
  each send a request head one byte every ``--drip`` seconds; meanwhile 20 GETs of /health, each on a new
  connection: p50/max of those that answered, and how many did not answer within 2 s.
* ``largest_post`` (both shapes): a POST of ``--post-ratings`` ratings (JSON, distinct movies) of a new user,
  then a 1 MiB text body of ~116,000 ``movie,rating`` lines: status, seconds, the API process's VmRSS/VmHWM
  before and after.  The ratings cap (``--max-post-ratings``, 1,000) refuses it with 413 at its 1,001st
  line, before anything else is done with it.
* ``deep_json``: a 1 MiB body of ``[``: status, seconds, and whether /health still answers.
* ``made_up_methods``: 100 requests with methods M1..M100; the ``recommender_http_requests_total`` series
  in /metrics before and after.
* ``health_flood_postgresql`` (only with ``--store`` or ``--pg``): ``--flood-threads`` clients GET /health
  for ``--flood-seconds`` while one more POSTs one rating at a time: /health requests/s, POSTs by status,
  POST p50/p99.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from common import ROOT, Client, rss_mb, start_server, summary

from model import Models, RankingModel, RankingParams, RatingModel, RatingParams, Scale
from storage.catalogue import Catalogue, Histories
from storage.versions import ModelVersions

SHAPES = {  # movies, users, ratings in the histories, the largest movie id (MovieLens's own)
    "ml-latest-small": (9_742, 610, 100_836, 193_609),
    "20m-synthetic": (27_027, 137_931, 20_000_263, 131_262),
}
GENRES = ("Action", "Adventure", "Animation", "Comedy", "Crime", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller")
MIB = 1 << 20
PROBE_TIMEOUT = 2.0
JSON_TYPE = {"Content-Type": "application/json"}
TEXT_TYPE = {"Content-Type": "text/plain"}


# --- a version without Spark ------------------------------------------------------------------------

def publish_random(model_dir: Path, shape: str, ratings: int | None = None, store_url: str | None = None,
                   seed: int = 0) -> dict:
    """Publish version 1 into ``model_dir``: random factors (the default ranks) for every user and movie of
    ``shape``, a catalogue and random histories of ``ratings`` ratings (popular movies rated most); with
    ``store_url`` (PostgreSQL) it is uploaded there too, as a trainer does.  What was published."""
    n_movies, n_users, default_ratings, max_id = SHAPES[shape]
    n_ratings = default_ratings if ratings is None else ratings
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    movie_ids = np.sort(rng.choice(np.arange(1, max_id + 1), n_movies, replace=False)).astype(np.int64)
    user_ids = np.arange(1, n_users + 1, dtype=np.int64)
    rating_params, ranking_params = RatingParams(), RankingParams()
    rating = RatingModel(mu=3.5, user_ids=user_ids, user_bias=rng.normal(0, 0.3, n_users),
                         user_factors=rng.normal(0, 0.3, (n_users, rating_params.rank)), movie_ids=movie_ids,
                         movie_bias=rng.normal(0, 0.3, n_movies),
                         movie_factors=rng.normal(0, 0.3, (n_movies, rating_params.rank)),
                         params=rating_params, scale=Scale(0.5, 5.0, 0.5))
    ranking = RankingModel(user_ids=user_ids, user_factors=rng.normal(0, 0.1, (n_users, ranking_params.rank)),
                           movie_ids=movie_ids, movie_factors=rng.normal(0, 0.1, (n_movies, ranking_params.rank)),
                           params=ranking_params)
    catalogue = Catalogue(movie_ids, [f"Movie {m} ({1900 + m % 120})" for m in movie_ids.tolist()],
                          [(GENRES[m % len(GENRES)], GENRES[(m // 7) % len(GENRES)]) for m in movie_ids.tolist()])
    users = rng.integers(1, n_users + 1, n_ratings)
    rows = np.minimum(rng.exponential(n_movies / 10, n_ratings), n_movies - 1).astype(np.int32)
    values = rng.integers(1, 11, n_ratings).astype(np.float32) / 2
    histories = Histories.build(users, rows, values, n_movies)
    del users, rows, values
    versions = ModelVersions(model_dir)
    number = versions.publish(Models(rating, ranking), catalogue, histories,
                              {"seq": 0, "n_ratings": len(histories), "synthetic": True})
    if store_url:
        from storage.backends import open_store
        from storage.shipping import shared_versions

        store = open_store(store_url, model_dir)
        try:
            shared_versions(store).upload(versions, number, versions.keep)
        finally:
            store.close()
    return {"movies": n_movies, "users": n_users, "ratings_drawn": n_ratings,
            "histories_ratings": len(histories),  # a user's second draw of a movie replaces the first
            "full_size_ratings": default_ratings, "publish_s": round(time.perf_counter() - start, 1),
            "_movie_ids": movie_ids}


def start_api(model_dir: Path, threads: int, store_url: str | None = None, timeout: float = 600):
    """``server.py --role api`` on ``model_dir`` (bench/common.py's start_server), once version 1 is in service."""
    extra = ["--threads", str(threads), *(["--store", store_url] if store_url else [])]
    started = time.perf_counter()
    proc, port = start_server(str(model_dir), *extra, role="api", timeout=timeout)
    deadline = time.monotonic() + timeout
    while health(port).get("model_version") != 1:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise SystemExit(f"bench: the API process did not serve version 1 within {timeout:.0f} s")
        time.sleep(0.2)
    return proc, port, round(time.perf_counter() - started, 1)


def stop(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except Exception:
            proc.kill()
            proc.wait()


# --- requests ----------------------------------------------------------------------------------------

def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 120) -> tuple[int | str, float, bytes]:
    """One request on a new connection: (status, or the error's name; seconds; body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    start = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, time.perf_counter() - start, data
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__, time.perf_counter() - start, b""
    finally:
        conn.close()


def health(port: int) -> dict:
    status, _, data = call(port, "GET", "/health", timeout=10)
    return json.loads(data) if status == 200 else {}


def memory(pid: int) -> dict:
    return {"rss_mb": rss_mb(pid), "hwm_mb": rss_mb(pid, "VmHWM")}


def timed_post(port: int, pid: int, user: int, body: bytes, headers: dict) -> dict:
    before = memory(pid)
    status, seconds, data = call(port, "POST", f"/{user}/ratings", body, headers, timeout=300)
    after = memory(pid)
    try:
        answer = json.loads(data)
    except ValueError:
        answer = {}
    return {"status": status, "seconds": round(seconds, 3), "bytes": len(body),
            "accepted": answer.get("accepted"), "error": answer.get("error"),
            "rss_before_mb": before["rss_mb"], "rss_after_mb": after["rss_mb"],
            "rss_growth_mb": round(after["rss_mb"] - before["rss_mb"], 1),
            "hwm_before_mb": before["hwm_mb"], "hwm_after_mb": after["hwm_mb"],
            "hwm_growth_mb": round(after["hwm_mb"] - before["hwm_mb"], 1)}


def mib_of_lines(movie_ids: np.ndarray) -> tuple[bytes, int]:
    """Exactly 1 MiB of ``movie,rating`` lines, 9 bytes each (four-digit ids where the catalogue has them); the
    line count."""
    short = movie_ids[(movie_ids >= 1000) & (movie_ids <= 9999)]
    ids = short if len(short) else movie_ids
    line = [f"{m},{(k % 9 + 2) / 2:.1f}\n".encode() for k, m in enumerate(ids.tolist())]
    out, size, k = [], 0, 0
    while size + len(line[k % len(line)]) <= MIB:
        out.append(line[k % len(line)])
        size += len(out[-1])
        k += 1
    return b"".join(out) + b"\n" * (MIB - size), k  # blank lines are ignored


def largest_post(port: int, pid: int, movie_ids: np.ndarray, k: int, user: int) -> dict:
    """A POST of ``k`` ratings (distinct movies while the catalogue has enough), then 1 MiB of lines."""
    rng = np.random.default_rng(k)
    movies = rng.choice(movie_ids, k, replace=k > len(movie_ids))
    body = json.dumps([{"movieId": int(m), "rating": float(rng.integers(1, 11) / 2)} for m in movies]).encode()
    result = {f"post_{k}_ratings": timed_post(port, pid, user, body, JSON_TYPE)}
    lines, count = mib_of_lines(movie_ids)
    result["post_1mib_lines"] = {"lines": count, **timed_post(port, pid, user + 1, lines, TEXT_TYPE)}
    return result


def deep_json(port: int, user: int) -> dict:
    status, seconds, data = call(port, "POST", f"/{user}/ratings", b"[" * MIB, JSON_TYPE, timeout=120)
    try:
        error = json.loads(data).get("error")
    except (ValueError, AttributeError):
        error = data[:120].decode("utf-8", "replace") or None
    return {"status": status, "seconds": round(seconds, 3), "error": error,
            "health_answers_after": call(port, "GET", "/health", timeout=10)[0] == 200}


def series(port: int, name: str = "recommender_http_requests_total") -> int:
    status, _, data = call(port, "GET", "/metrics", timeout=30)
    if status != 200:
        return -1
    return sum(1 for line in data.decode().splitlines() if line.startswith(name + "{"))


def made_up_methods(port: int, count: int = 100) -> dict:
    before = series(port)
    statuses = Counter(str(call(port, f"M{i}", "/health", timeout=10)[0]) for i in range(1, count + 1))
    return {"requests": count, "statuses": dict(statuses), "http_requests_total_series_before": before,
            "http_requests_total_series_after": series(port)}


def slow_connections(port: int, n: int, drip: float, probes: int = 20) -> dict:
    """``n`` sockets each sending a never-ending request head a byte at a time, while ``probes`` GETs of /health
    (a new connection each, ``PROBE_TIMEOUT`` s to answer) try to get through."""
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-Slow-%d: x\r\n" % i for i in range(10_000))
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
    done, sent, closed = threading.Event(), [0] * n, [False] * n
    deadline = time.monotonic() + probes * PROBE_TIMEOUT + 30  # never more than the probes can take

    def dripper() -> None:
        while not done.wait(drip) and time.monotonic() < deadline:
            for i, s in enumerate(socks):
                if closed[i]:
                    continue
                try:
                    s.sendall(head[sent[i] % len(head):][:1])
                    sent[i] += 1
                except OSError:
                    closed[i] = True

    thread = threading.Thread(target=dripper, name="slow-clients", daemon=True)
    thread.start()
    time.sleep(max(1.0, 3 * drip))  # every socket has sent part of its head: each holds a worker thread
    answered, failed = [], Counter()
    for _ in range(probes):
        status, seconds, _ = call(port, "GET", "/health", timeout=PROBE_TIMEOUT)
        if status == 200:
            answered.append(seconds * 1000)
        else:
            failed[str(status)] += 1
    done.set()
    thread.join(10)
    for s in socks:
        s.close()
    after = call(port, "GET", "/health", timeout=30)
    return {"slow_sockets": n, "drip_seconds": drip, "probes": probes, "probe_timeout_s": PROBE_TIMEOUT,
            "answered": summary(answered), "failed_within_2s": sum(failed.values()), "failures": dict(failed),
            "bytes_sent_per_socket": round(sum(sent) / n, 1),
            "slow_sockets_closed_by_server": sum(closed),
            "health_after_closing": {"status": after[0], "ms": round(after[1] * 1000, 1)}}


def health_flood(port: int, threads: int, seconds: float, movie: int) -> dict:
    """``threads`` clients GET /health for ``seconds`` while one more POSTs one rating of a new user at a time."""
    deadline = time.perf_counter() + seconds
    gets, get_failures, posts, post_ms = [0] * threads, Counter(), Counter(), []
    lock = threading.Lock()

    def flood(i: int) -> None:
        client = Client("127.0.0.1", port)
        while time.perf_counter() < deadline:
            try:
                status = client.call("GET", "/health", check=False)[1]
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                client = Client("127.0.0.1", port)
            if status == 200:
                gets[i] += 1
            else:
                with lock:
                    get_failures[str(status)] += 1

    def poster() -> None:
        k = 0
        while time.perf_counter() < deadline:
            k += 1
            body = json.dumps([{"movieId": movie, "rating": (k % 10 + 1) / 2}]).encode()
            status, took, _ = call(port, "POST", f"/{9_000_000 + k}/ratings", body, JSON_TYPE, timeout=30)
            posts[str(status)] += 1
            post_ms.append(took * 1000)

    workers = [threading.Thread(target=flood, args=(i,)) for i in range(threads)] + [threading.Thread(target=poster)]
    start = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join(seconds + 60)
    elapsed = time.perf_counter() - start
    return {"health_threads": threads, "seconds": seconds, "health_requests_per_s": round(sum(gets) / elapsed, 1),
            "health_failures": dict(get_failures), "posts_by_status": dict(posts), "post": summary(post_ms)}


# --- the run -----------------------------------------------------------------------------------------

def run_shape(root: Path, shape: str, args, ratings: int | None, hostile: bool) -> dict:
    model_dir = root / shape
    published = publish_random(model_dir, shape, ratings)
    movie_ids = published.pop("_movie_ids")
    proc, port, started = start_api(model_dir, args.threads)
    try:
        result = {**published, "api_start_s": started, "api_idle": memory(proc.pid)}
        if ratings is not None and ratings < published["full_size_ratings"]:
            result["note"] = (f"smaller histories than the full size: {ratings:,} ratings drawn (--big-ratings), "
                              f"not {published['full_size_ratings']:,}")
        result["largest_post"] = largest_post(port, proc.pid, movie_ids, args.post_ratings, 7_000_000)
        if hostile:
            result["deep_json"] = deep_json(port, 7_000_010)
            result["made_up_methods"] = made_up_methods(port)
            result["slow_connections"] = slow_connections(port, args.threads, args.drip)
        result["api_end"] = memory(proc.pid)
        return result
    finally:
        stop(proc)


def run_flood(root: Path, url: str, args) -> dict:
    model_dir = root / "flood"
    published = publish_random(model_dir, "ml-latest-small", store_url=url)
    movie = int(published.pop("_movie_ids")[0])
    proc, port, started = start_api(model_dir, args.threads, store_url=url)
    try:
        return {"shape": "ml-latest-small", "api_start_s": started,
                **health_flood(port, args.flood_threads, args.flood_seconds, movie)}
    finally:
        stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description="Hostile clients against server.py --role api (see the docstring).")
    p.add_argument("--threads", type=int, default=16, help="the API's worker threads, and the slow sockets")
    p.add_argument("--post-ratings", type=int, default=1000, help="ratings in the largest POST (default 1000)")
    p.add_argument("--big-ratings", type=int, default=SHAPES["20m-synthetic"][2],
                   help="ratings in the 20M-shaped histories (default 20,000,263: all of them)")
    p.add_argument("--drip", type=float, default=0.2, help="seconds between two bytes of a slow socket")
    p.add_argument("--store", help="postgresql://... for the /health flood (skipped without it or --pg)")
    p.add_argument("--pg", action="store_true", help="start a throwaway PostgreSQL (tests/pgserver.py) for it")
    p.add_argument("--flood-threads", type=int, default=8)
    p.add_argument("--flood-seconds", type=float, default=10)
    p.add_argument("--skip-big", action="store_true", help="only the ml-latest-small shape")
    args = p.parse_args()
    if args.store and not args.store.startswith(("postgresql://", "postgres://")):
        p.error("--store must be a postgresql:// URL")
    result = {"threads": args.threads, "post_ratings": args.post_ratings, "cpus": os.cpu_count(), "shapes": {}}
    root = Path(tempfile.mkdtemp(prefix="hostile-bench-"))
    pg = None
    try:
        result["shapes"]["ml-latest-small"] = run_shape(root, "ml-latest-small", args, None, hostile=True)
        if not args.skip_big:
            result["shapes"]["20m-synthetic"] = run_shape(root, "20m-synthetic", args, args.big_ratings,
                                                          hostile=False)
        url = args.store
        if url is None and args.pg:
            sys.path.insert(0, str(ROOT / "tests"))
            from pgserver import PostgresServer

            pg = PostgresServer()
            url = pg.create_database()
        result["health_flood_postgresql"] = run_flood(root, url, args) if url else \
            {"skipped": "give --store postgresql://... or --pg"}
    finally:
        if pg is not None:
            pg.close()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
