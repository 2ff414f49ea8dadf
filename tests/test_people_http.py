"""People's data, movie rules, filters and explanations over HTTP on a live CherryPy server on 127.0.0.1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import copy_model, serving


@pytest.fixture(scope="module")
def shared(fixture_model, tmp_path_factory):
    with serving(copy_model(fixture_model, tmp_path_factory.mktemp("people") / "m")) as server:
        yield server


def _state(rec) -> tuple:
    """What a refused request must not change: stored requests, the shelf, counts, the forgotten users."""
    shelf = rec.shelf
    with rec.store.reading() as db:
        tables = tuple(tuple(db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall())
                       for t in ("forgotten", "unrated", "hidden", "movie_rules"))
    return (rec.store.entries(), rec.store.last_seq, {u: v.tolist() for u, v in shelf.hidden.items()},
            dict(shelf.rules), rec.current().counts.tolist(), tables)


BAD = [
    ("GET", "/4/ratings/top/5?genre=Comedy|Nope", None, 400, "known genres: Comedy, Crime, Drama"),
    ("GET", "/recommend?user=4&exclude_genre=Nope", None, 400, "known genres"),
    ("GET", "/movies/1/similar?genre=Nope", None, 400, "known genres"),
    ("GET", "/4/ratings/top/5?year=abc", None, 400, "year must be"),
    ("GET", "/4/ratings/top/5?exclude=" + ",".join(["1"] * 1001), None, 400, "at most 1000"),
    ("GET", "/4/ratings/top/5?exclude=1,two", None, 400, "exclude must be"),
    ("GET", "/4/ratings/top/5?exclude=%C2%B2", None, 400, "exclude must be"),
    ("GET", "/4/ratings/top/5?explain=yes", None, 400, "explain must be"),
    ("GET", "/4/ratings/top/5?diversify=2", None, 400, "diversify must be"),
    ("GET", "/4/ratings/top/5?diversify=nan", None, 400, "diversify must be"),
    ("PUT", "/admin/movies/1", {"available_from": "2026-13-01"}, 400, "ISO date"),
    ("PUT", "/admin/movies/1", {"hidden": 1}, 400, "hidden must be"),
    ("PUT", "/admin/movies/424242", {"hidden": True}, 404, "unknown movie"),
    ("PUT", "/admin/movies/1", [1], 400, "JSON object"),
    ("DELETE", "/admin/movies/1", None, 404, "no rule"),
    ("POST", "/4/hidden", [424242], 404, "unknown movie"),
    ("POST", "/4/hidden", {"movieId": 1}, 400, "JSON array"),
    ("POST", "/4/hidden", list(range(1, 1002)), 413, "at most 1000"),
    ("DELETE", "/4/hidden/1", None, 404, "has not hidden"),
    ("DELETE", "/4/ratings/424242", None, 404, "unknown movie"),
    ("DELETE", "/4/ratings/x", None, 400, "movie id"),
    ("DELETE", "/abc/ratings", None, 400, "user id"),
]


@pytest.mark.parametrize("method,path,body,status,message", BAD, ids=[f"{b[0]} {b[1][:40]} {b[3]}" for b in BAD])
def test_bad_values_are_json_4xx_and_change_nothing(shared, method, path, body, status, message):
    rec = shared.recommender
    before = _state(rec)
    payload = None if body is None else json.dumps(body)
    got, data, raw = shared.call(method, path, payload, {"Content-Type": "application/json"} if body else {})
    assert got == status, raw[:300]
    assert set(data) == {"error"} and message in data["error"], data
    assert _state(rec) == before


def test_withdrawing_a_rating_not_rated_is_a_404(shared, csv_fixture):
    unrated = next(m for m in range(1, 41) if (6, m) not in {(u, mm) for u, mm, _ in csv_fixture.ratings})
    before = _state(shared.recommender)
    status, body, _ = shared.call("DELETE", f"/6/ratings/{unrated}")
    assert status == 404 and "has not rated" in body["error"] and _state(shared.recommender) == before


def test_forget_me_over_http_with_tokens(live, csv_fixture):
    """The user's own token forgets them (and is revoked by it); another user's token may not; the admin may."""
    server = live(api_token="s3cret-token")
    admin = {"Authorization": "Bearer s3cret-token"}
    seven = {"Authorization": f"Bearer {server.call('POST', '/admin/users/7/token', headers=admin)[1]['token']}"}
    eight = {"Authorization": f"Bearer {server.call('POST', '/admin/users/8/token', headers=admin)[1]['token']}"}
    assert server.post_json("/7/ratings", [{"movieId": 1, "rating": 4.0}], seven)[0] == 201
    before = _state(server.recommender)
    for method, path in (("DELETE", "/7/ratings"), ("DELETE", "/7/ratings/1"), ("POST", "/7/hidden"),
                         ("GET", "/7/hidden"), ("DELETE", "/7/hidden/1")):
        status, body, _ = server.call(method, path, "[2]" if method == "POST" else None,
                                      {**eight, "Content-Type": "application/json"})
        assert status == 403 and "user 8's" in body["error"], path
    assert server.call("PUT", "/admin/movies/1", '{"hidden": true}', {**seven, "Content-Type": "application/json"}
                       )[0] == 403
    assert _state(server.recommender) == before
    status, body, _ = server.call("DELETE", "/7/ratings", headers=seven)
    mine = sum(1 for u, _, _ in csv_fixture.ratings if u == 7)
    assert status == 200 and body == {"user": 7, "posted_removed": 1,
                                      "dataset_ratings_excluded": mine - (1 if (7, 1) in {
                                          (u, m) for u, m, _ in csv_fixture.ratings} else 0)}
    assert server.call("GET", "/7/ratings", headers=seven)[0] == 401  # the token went with them
    status, rated, _ = server.call("GET", "/7/ratings", headers=admin)
    assert status == 200 and rated["ratings"] == []
    assert server.call("GET", "/7/ratings/top/3?min_count=0", headers=admin)[1]["fallback"] == "popular"
    assert server.call("DELETE", "/8/ratings", headers=admin)[0] == 200


def test_not_interested_rules_and_filters_over_http(shared):
    top = shared.get("/12/ratings/top/3?min_count=0")[1]["movies"]
    first = top[0]["movieId"]
    status, body, _ = shared.post_json("/12/hidden", [first])
    assert status == 200 and body == {"user": 12, "hidden": [{"movieId": first, "title": top[0]["title"]}]}
    assert shared.get("/12/hidden")[1] == body
    assert first not in [m["movieId"] for m in shared.get("/12/ratings/top/40?min_count=0")[1]["movies"]]
    assert first not in [m["movieId"] for m in shared.get("/recommend?user=12&n=40&min_count=0")[1]["recommendations"]]
    assert shared.call("DELETE", f"/12/hidden/{first}")[1] == {"user": 12, "movieId": first, "hidden": False}
    status, rule, _ = shared.call("PUT", f"/admin/movies/{first}", '{"available_until": "2000-01-01"}',
                                  {"Content-Type": "application/json"})
    assert status == 200 and rule["shown_today"] is False and rule["available_until"] == "2000-01-01"
    assert shared.get("/admin/movies")[1]["movies"] == [rule]
    for path in ("/12/ratings/top/40?min_count=0", "/recommend?user=12&n=40&min_count=0",
                 "/movies/1/similar?count=40&min_count=0", "/movies?q=movie&limit=100"):
        body = shared.get(path)[1]
        listed = body.get("movies") or body.get("recommendations") or body.get("similar")
        assert listed and first not in [m["movieId"] for m in listed], path
    assert shared.get(f"/movies/{first}")[0] == 200 and shared.get(f"/12/ratings/{first}")[0] == 200
    assert shared.call("DELETE", f"/admin/movies/{first}")[1] == {"movieId": first, "cleared": True}
    status, body, _ = shared.get("/12/ratings/top/5?min_count=0&year=1800-1810")
    assert status == 200 and body["movies"] == [] and "year=1800-1810" in body["reason"] and body["year"] == "1800-1810"
    body = shared.get("/12/ratings/top/40?min_count=0&genre=Drama|Crime&exclude_genre=Comedy&exclude=21,22")[1]
    assert body["movies"] and all("Drama" in m["genres"] and m["movieId"] not in (21, 22) for m in body["movies"])
    assert body["exclude"] == 2 and body["exclude_genre"] == "Comedy"


def test_explanations_name_the_users_own_rated_movies(shared, csv_fixture):
    rated = {m: r for u, m, r in csv_fixture.ratings if u == 14}
    body = shared.get("/14/ratings/top/5?min_count=0&explain=1")[1]
    assert body["movies"] and all(1 <= len(m["because"]) <= 3 for m in body["movies"])
    for movie in body["movies"]:
        for reason in movie["because"]:
            assert rated[reason["movieId"]] == reason["rating"] and reason["title"]
    assert "because" not in shared.get("/14/ratings/top/5?min_count=0")[1]["movies"][0]
    recs = shared.get("/recommend?user=14&n=3&min_count=0&explain=1")[1]["recommendations"]
    assert all(r["because"] for r in recs)
    # A folded-in user: a newcomer who just posted is explained from those ratings.
    assert shared.post_json("/5151/ratings", [{"movieId": m, "rating": 5} for m in csv_fixture.comedies[:4]])[0] == 201
    movies = shared.get("/5151/ratings/top/3?min_count=0&explain=1")[1]["movies"]
    assert all(m["because"] and {b["movieId"] for b in m["because"]} <= set(csv_fixture.comedies[:4]) for m in movies)


def test_diversify_reranks_towards_less_alike_lists(shared):
    rec = shared.recommender
    unit = rec.current().snapshot.rank_unit

    def spread(ids):
        rows = [rec.current().catalogue.row(m) for m in ids]
        v = unit[rows].astype(float)
        s = v @ v.T
        return float(s[np.triu_indices(len(rows), 1)].mean())

    plain = [m["movieId"] for m in shared.get("/16/ratings/top/6?min_count=0")[1]["movies"]]
    zero = shared.get("/16/ratings/top/6?min_count=0&diversify=0")[1]
    assert [m["movieId"] for m in zero["movies"]] == plain and "diversify" not in zero
    body = shared.get("/16/ratings/top/6?min_count=0&diversify=1")[1]
    mixed = [m["movieId"] for m in body["movies"]]
    assert body["diversify"] == 1.0 and mixed[0] == plain[0] and len(mixed) == 6
    assert spread(mixed) < spread(plain)  # mean cosine between the list's movies: lower is more diverse
