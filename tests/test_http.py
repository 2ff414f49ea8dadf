"""The HTTP API on a live CherryPy server on 127.0.0.1, as clients call it."""

from __future__ import annotations

import http.client
import json

import pytest
from conftest import copy_model, serving

TUTORIAL_FORM = {"Content-Type": "application/x-www-form-urlencoded"}  # what curl --data-binary sends


@pytest.fixture(scope="module")
def shared(fixture_model, tmp_path_factory):
    """One server for the tests that do not need a fresh recommender (they post under distinct user ids)."""
    with serving(copy_model(fixture_model, tmp_path_factory.mktemp("shared") / "m")) as server:
        yield server


def _tutorial_body(fx) -> str:
    """Ten ratings in the tutorial's user_ratings.file format: comedies loved, dramas hated."""
    lines = [f"{m},5" for m in fx.comedies[:5]] + [f"{m},1" for m in fx.dramas[:5]]
    return "\n".join(lines) + "\n"


def test_new_user_posts_tutorial_file_and_gets_personal_top_n(shared, csv_fixture):
    server = shared
    status, body, _ = server.call("POST", "/4242/ratings", _tutorial_body(csv_fixture), TUTORIAL_FORM)
    assert status == 201 and body == {"user": 4242, "accepted": 10, "model_version": 1}
    status, top, _ = server.get("/4242/ratings/top/5?min_count=0")
    assert status == 200 and "fallback" not in top
    ids = [m["movieId"] for m in top["movies"]]
    assert len(ids) == 5 and not set(ids) & (set(csv_fixture.comedies[:5]) | set(csv_fixture.dramas[:5]))
    assert set(ids) <= set(csv_fixture.comedies)
    assert set(top["movies"][0]) >= {"movieId", "title", "genres", "predicted_rating", "ratings_count"}
    status, rated, _ = server.get("/4242/ratings")
    assert status == 200 and len(rated["ratings"]) == 10


def test_json_post_and_single_prediction(shared, csv_fixture):
    server = shared
    status, body, _ = server.post_json("/77/ratings", [{"movieId": 1, "rating": 4.5}, {"movieId": 31, "rating": 1}])
    assert status == 201 and body["accepted"] == 2
    status, one, _ = server.get("/77/ratings/1")
    assert status == 200
    assert one["movieId"] == 1 and one["title"] == "American President, The (1995)" and one["user_rating"] == 4.5
    assert set(one) >= {"movieId", "title", "predicted_rating", "ratings_count", "user_rating"}
    status, other, _ = server.get("/77/ratings/2")
    assert status == 200 and other["user_rating"] is None and 0.5 <= other["predicted_rating"] <= 5


def test_min_count_and_genre_filters_hold_for_every_movie(shared):
    server = shared
    for min_count in (0, 20, 36):
        status, top, _ = server.get(f"/3/ratings/top/100?min_count={min_count}&genre=Drama")
        assert status == 200
        for movie in top["movies"]:
            assert movie["ratings_count"] >= min_count and "Drama" in movie["genres"]
    status, everything, _ = server.get("/3/ratings/top/100?min_count=100000")
    assert status == 200 and everything["movies"] == []


def test_unrated_user_gets_popular_fallback(shared):
    server = shared
    status, top, _ = server.get("/123456/ratings/top/3?min_count=30")
    assert status == 200 and top["fallback"] == "popular"
    assert len(top["movies"]) == 3 and all(m["ratings_count"] >= 30 for m in top["movies"])
    status, rec, _ = server.get("/recommend?user=123456&n=2")
    assert status == 200 and rec["user"] == 123456 and rec["fallback"] == "popular"
    assert [set(r) for r in rec["recommendations"]] == [{"movieId", "title", "predicted_rating", "score"}] * 2
    assert all(r["score"] == r["predicted_rating"] for r in rec["recommendations"])  # the tutorial's name kept


def test_search_similar_movie_and_health(shared, csv_fixture):
    server = shared
    status, found, _ = server.get("/movies?q=president")
    assert status == 200 and [m["movieId"] for m in found["movies"]] == [1]
    status, similar, _ = server.get(f"/movies/{csv_fixture.comedies[1]}/similar?count=3")
    assert status == 200 and len(similar["similar"]) == 3
    assert {m["movieId"] for m in similar["similar"]} <= set(csv_fixture.comedies)
    status, movie, _ = server.get("/movies/3")
    assert status == 200 and movie["title"] == "Café, Le (1990)" and movie["ratings_count"] > 0
    status, health, _ = server.get("/health")
    assert status == 200 and health["status"] == "ok" and health["model_version"] == 1
    assert health["n_ratings"] == int(server.recommender.current().counts.sum())
    assert set(health) >= {"model_version", "trained_at", "n_ratings", "pending_ratings", "training", "trainer",
                           "next_fit"}


BIG = b"1,4\n" * (300_000)  # 1.2 MB
OVER_CAP_TEXT = b"1,4\n" * 1001  # one over the default cap (and rated twice: the cap is checked first)
OVER_CAP_JSON = json.dumps([{"movieId": 1, "rating": 4}] * 1001).encode()
DEEP = b"[" * 200_000 + b"]" * 200_000  # json.loads: RecursionError

ERRORS = [
    ("GET", "/abc/ratings/top/5", None, None, 400, "user id"),
    ("GET", "/-1/ratings/top/5", None, None, 400, "user id"),
    ("GET", "/2147483648/ratings/top/5", None, None, 400, "user id"),
    ("GET", "/99999999999999999999999/ratings/top/5", None, None, 400, "user id"),
    ("GET", "/%C3%A9/ratings/top/5", None, None, 400, "user id"),
    ("GET", "/1/ratings/top/0", None, None, 400, "count"),
    ("GET", "/1/ratings/top/1001", None, None, 400, "count"),
    ("GET", "/1/ratings/top/abc", None, None, 400, "count"),
    ("GET", "/1/ratings/top/5?min_count=-1", None, None, 400, "min_count"),
    ("GET", "/1/ratings/top/5?min_count=x", None, None, 400, "min_count"),
    ("GET", "/1/ratings/top/5?genre=Nope", None, None, 400, "unknown genre"),
    ("GET", "/1/ratings/424242", None, None, 404, "unknown movie"),
    ("GET", "/movies/424242/similar", None, None, 404, "unknown movie"),
    ("GET", "/recommend", None, None, 400, "user is required"),
    ("GET", "/recommend?user=1&n=0", None, None, 400, "n must"),
    ("GET", "/movies", None, None, 400, "q is required"),
    ("GET", "/no/such/route/at/all", None, None, 404, "no such route"),
    ("PUT", "/1/ratings", None, None, 405, "not allowed"),
    ("POST", "/1/ratings", b"", "text/plain", 400, "empty"),
    ("POST", "/1/ratings", b"1,9\n", "text/plain", 400, "line 1"),
    ("POST", "/1/ratings", b"1,4\nfoo\n", "text/plain", 400, "line 2"),
    ("POST", "/1/ratings", b"1,4\n2,abc\n", "text/plain", 400, "line 2"),
    ("POST", "/1/ratings", b"424242,4\n", "text/plain", 400, "unknown movie"),
    ("POST", "/1/ratings", b"1,4\n1,3\n", "text/plain", 400, "twice"),
    ("POST", "/1/ratings", b"1,inf\n", "text/plain", 400, "finite"),
    ("POST", "/1/ratings", b'[{"movieId": 1, "rating": NaN}]', "application/json", 400, "finite"),
    ("POST", "/1/ratings", b'[{"movieId": 1, "rating": "4"}]', "application/json", 400, "item 1"),
    ("POST", "/1/ratings", b'[{"movieId": true, "rating": 4}]', "application/json", 400, "movie id"),
    ("POST", "/1/ratings", b'{"movieId": 1, "rating": 4}', "application/json", 400, "JSON list"),
    ("POST", "/1/ratings", b'[{"movieId": 1, "rat', "application/json", 400, "not valid JSON"),
    ("POST", "/1/ratings", b"\xff\xfe1,4\n", "text/plain", 400, "UTF-8"),
    ("POST", "/1/ratings", b"<r/>", "application/xml", 415, "content type"),
    ("POST", "/1/ratings", BIG, "text/plain", 413, "larger than"),
    ("POST", "/abc/ratings", b"1,4\n", "text/plain", 400, "user id"),
    ("POST", "/2147483648/ratings", b"1,4\n", "text/plain", 400, "user id"),
    ("POST", "/1/ratings", b"-1,4\n", "text/plain", 400, "movie id"),
    ("POST", "/1/ratings", b"99999999999999999999999,4\n", "text/plain", 400, "movie id"),
    ("POST", "/1/ratings", b"\xd9\xa3,4\n", "text/plain", 400, "movie id"),
    ("POST", "/1/ratings", b"1,-0.5\n", "text/plain", 400, "not on the scale"),
    ("POST", "/1/ratings", b"1,4,5\n", "text/plain", 400, "line 1"),
    ("POST", "/1/ratings", b'[{"movieId": 1, "rating": 1e999}]', "application/json", 400, "finite"),
    ("POST", "/1/ratings", b'[{"movieId": 1, "rating": 1%s}]' % (b"0" * 400), "application/json", 400, "finite"),
    ("POST", "/1/ratings", b'[{"movieId": 1.5, "rating": 4}]', "application/json", 400, "movie id"),
    ("POST", "/1/ratings", b'[{"movieId": 1, "rating": 4, "x": 1}]', "application/json", 400, "exactly"),
    ("POST", "/1/ratings", b"[]", "application/json", 400, "no ratings"),
    ("POST", "/1/ratings", b"1,4\n", "multipart/form-data; boundary=x", 415, "content type"),
    ("GET", "/1/ratings/top/-3", None, None, 400, "count"),
    ("GET", "/%D9%A3/ratings/top/5", None, None, 400, "user id"),
    ("PUT", "/1/ratings/top/5", None, None, 405, "not allowed"),
    ("POST", "/1/ratings", OVER_CAP_TEXT, "text/plain", 413, "at most 1000 ratings"),
    ("POST", "/1/ratings", OVER_CAP_JSON, "application/json", 413, "at most 1000 ratings"),
    ("POST", "/1/ratings", DEEP, "application/json", 400, "nests more than"),
    ("POST", "/1/ratings", b"[" * 300_000, "text/plain", 400, "nests more than"),
    ("POST", "/1/ratings", b'[{"movieId": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b', "rating": 4}]',
     "application/json", 400, "nests more than"),
]


@pytest.mark.parametrize("method,path,body,ctype,status,message", ERRORS,
                         ids=[f"{e[0]} {e[1][:30]} {e[4]}" for e in ERRORS])
def test_bad_requests_get_json_4xx_and_change_nothing(shared, method, path, body, ctype, status, message):
    server = shared
    rec = server.recommender
    store_before = rec.store.entries()
    version_before = (rec.versions.current(), rec.version)
    counts_before = rec.current().counts.copy()
    got, data, raw = server.call(method, path, body, {"Content-Type": ctype} if ctype else {})
    assert got == status, raw[:300]
    assert set(data) == {"error"} and message in data["error"], data
    assert rec.store.entries() == store_before
    assert (rec.versions.current(), rec.version) == version_before
    assert (rec.current().counts == counts_before).all()


def test_api_token_guards_posts_and_each_users_ratings(live, csv_fixture):
    server = live(api_token="s3cret-token")
    payload = [{"movieId": 1, "rating": 4.0}]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
        status, body, _ = server.post_json("/1/ratings", payload, headers)
        assert status == 401 and "Bearer" in body["error"]
    assert server.recommender.store.entries() == []
    good = {"Authorization": "Bearer s3cret-token"}
    assert server.post_json("/1/ratings", payload, good)[0] == 201
    for path in ("/1/ratings", "/1/ratings/1", "/1/ratings/top/3", "/recommend?user=1"):
        status, body, _ = server.get(path)
        assert status == 401 and "Bearer" in body["error"], path
        assert server.call("GET", path, headers=good)[0] == 200, path
    status, body, _ = server.call("POST", "/admin/retrain")  # asking for a fit is a write too
    assert status == 401 and server.recommender.store.retrain_requested() is None
    assert server.call("POST", "/admin/retrain", headers=good)[0] == 202
    for path in ("/health", "/movies?q=a", "/movies/1", "/movies/1/similar", "/"):
        assert server.get(path)[0] == 200, path  # the catalogue is public


def test_each_user_token_reads_and_writes_its_own_user_only(live):
    """The admin token issues user tokens (stored hashed, in the store every API process shares); a user's
    token reads and writes that user and nobody else, and no operator endpoint; reissuing or revoking ends it."""
    import hashlib
    import sqlite3

    server = live(api_token="admin-s3cret")
    admin = {"Authorization": "Bearer admin-s3cret"}
    assert server.call("POST", "/admin/users/7/token")[0] == 401
    status, issued, _ = server.call("POST", "/admin/users/7/token", headers=admin)
    assert status == 201 and issued["user"] == 7
    token = issued["token"]
    own = {"Authorization": f"Bearer {token}"}
    payload = [{"movieId": 1, "rating": 4.0}]
    assert server.post_json("/7/ratings", payload, own)[0] == 201
    for path in ("/7/ratings", "/7/ratings/1", "/7/ratings/top/3", "/recommend?user=7"):
        assert server.call("GET", path, headers=own)[0] == 200, path
    entries = server.recommender.store.entries()
    for method, path in (("POST", "/8/ratings"), ("GET", "/8/ratings"), ("GET", "/8/ratings/top/3"),
                         ("GET", "/recommend?user=8")):
        status, body, _ = server.call(method, path, '[{"movieId": 1, "rating": 1}]' if method == "POST" else None,
                                      own)
        assert status == 403 and "user 7's" in body["error"], path
    for method, path in (("POST", "/admin/retrain"), ("POST", "/admin/users/8/token"),
                         ("DELETE", "/admin/users/7/token")):
        status, body, _ = server.call(method, path, headers=own)
        assert status == 403 and "admin token" in body["error"], path
    assert server.recommender.store.entries() == entries and server.recommender.store.retrain_requested() is None
    assert server.call("GET", "/8/ratings", headers=admin)[0] == 200  # the operator reads anyone
    # Stored as a hash only.
    with sqlite3.connect(server.recommender.store.path) as db:
        stored = db.execute("SELECT user, hash FROM user_tokens").fetchall()
    assert stored == [(7, hashlib.sha256(token.encode()).digest())]
    path = server.recommender.store.path
    for file in (path, path.with_name(path.name + "-wal")):
        assert not file.exists() or token.encode() not in file.read_bytes()
    # Reissued: the old token stops working; revoked: the new one too.
    renewed = server.call("POST", "/admin/users/7/token", headers=admin)[1]["token"]
    assert server.call("GET", "/7/ratings", headers=own)[0] == 401
    assert server.call("GET", "/7/ratings", headers={"Authorization": f"Bearer {renewed}"})[0] == 200
    assert server.call("DELETE", "/admin/users/7/token", headers=admin)[1] == {"user": 7, "revoked": True}
    assert server.call("GET", "/7/ratings", headers={"Authorization": f"Bearer {renewed}"})[0] == 401


def test_user_tokens_need_an_admin_token(live):
    server = live()
    status, body, _ = server.call("POST", "/admin/users/7/token")
    assert status == 403 and "admin token" in body["error"]


def test_access_log_is_written_by_translogger(shared, caplog):
    server = shared
    with caplog.at_level("INFO", logger="wsgi"):
        server.get("/health")
    assert any('"GET /health HTTP/1.1" 200' in r.getMessage() for r in caplog.records)


def test_ratings_store_is_readable_by_its_owner_only(shared):
    server = shared
    assert server.post_json("/9/ratings", [{"movieId": 2, "rating": 3.5}])[0] == 201
    assert server.recommender.store.path.stat().st_mode & 0o777 == 0o600
    assert server.recommender.store.entries()[-1].ratings == ((2, 3.5),)


def test_the_tutorials_1_to_10_file_is_explained(shared):
    status, body, _ = shared.call("POST", "/4300/ratings", b"26,9\n1,8\n16,7\n", {"Content-Type": "text/plain"})
    assert status == 400
    assert body["error"] == ("line 1: 9 is not on the scale 0.5 to 5 in steps of 0.5 (3 of 3 ratings are off "
                             "the scale); this looks like a 1-10 scale (the Spark tutorial's user_ratings file "
                             "uses one): this dataset uses 0.5-5, so halve the ratings")
    status, body, _ = shared.call("POST", "/4300/ratings", b"26,4.5\n1,6\n", {"Content-Type": "text/plain"})
    assert status == 400 and body["error"] == "line 2: 6 is not on the scale 0.5 to 5 in steps of 0.5"


@pytest.mark.parametrize("ctype", ["application/x-www-form-urlencoded", "text/plain", None])
def test_json_is_read_as_json_whatever_the_content_type_says(shared, ctype):
    body = b'[{"movieId": 3, "rating": 4.5}, {"movieId": 4, "rating": 2}]'  # what curl --data sends
    status, answer, _ = shared.call("POST", "/4301/ratings", body, {"Content-Type": ctype} if ctype else {})
    assert status == 201 and answer["accepted"] == 2
    assert [(m.movie_id, r) for m, r in shared.recommender.rated(4301)] == [(3, 4.5), (4, 2.0)]


def test_a_csv_header_line_is_skipped(shared):
    status, answer, _ = shared.call("POST", "/4302/ratings", b"movieId,rating\n5,3.5\n",
                                    {"Content-Type": "text/plain"})
    assert status == 201 and answer["accepted"] == 1
    status, answer, _ = shared.call("POST", "/4302/ratings", b"5,3.5\nmovieId,rating\n",
                                    {"Content-Type": "text/plain"})
    assert status == 400 and "line 2" in answer["error"]  # only a first line can be a header


def test_before_the_first_version_every_answer_is_a_503_that_says_why(tmp_path):
    with serving(tmp_path / "empty") as server:
        for path in ("/1/ratings/top/3", "/1/ratings/1", "/movies?q=toy", "/health"):
            status, body, _ = server.get(path)
            assert status == 503 and "no model has been published" in body["error"], path
            assert str(tmp_path) not in body["error"], path  # the folder goes to the log, not to anyone
        status, body, _ = server.post_json("/1/ratings", [{"movieId": 1, "rating": 4.0}])
        assert status == 503 and server.recommender.store.entries() == []
        status, _, raw = server.get("/")
        assert status == 503 and b"starting" in raw and b"reloads itself" in raw  # the page, for people


def test_a_request_for_a_fit_is_recorded_for_the_trainer(live):
    server = live()
    status, body, _ = server.call("POST", "/admin/retrain")
    assert status == 202 and body["model_version"] == 1
    assert server.recommender.store.retrain_requested() == body["requested_at"]


def test_writes_from_other_sites_and_other_host_names_are_refused(live):
    """A page elsewhere can make a browser post here (a form, a text/plain fetch) and, through DNS rebinding,
    name this loopback service by another host name: both get a 403 and change nothing; the service's own
    page (same Origin) and clients without an Origin (curl) go on working."""
    server = live()
    store = server.recommender.store
    for body, ctype in ((b"1,4.5\n", "text/plain"), (b"1,4.5", "application/x-www-form-urlencoded"),
                        (b'[{"movieId": 1, "rating": 4.5}]', "application/json")):
        for origin in ("http://evil.example", "null", f"http://localhost:{server.port + 1}"):
            status, body_, _ = server.call("POST", "/5555/ratings", body, {"Content-Type": ctype, "Origin": origin})
            assert status == 403 and "another site" in body_["error"], (origin, body_)
    assert server.call("POST", "/admin/retrain", headers={"Origin": "http://evil.example"})[0] == 403
    assert store.entries() == [] and store.retrain_requested() is None
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.nip.io"):
        status, body_, _ = server.call("GET", "/1/ratings/top/3", headers={"Host": host})
        assert status == 403 and "requests for host" in body_["error"], host
    same = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{server.port}"}
    assert server.call("POST", "/5555/ratings", b'[{"movieId": 1, "rating": 4.5}]', same)[0] == 201
    assert server.call("GET", "/1/ratings/top/3", headers={"Host": f"localhost:{server.port}"})[0] == 200
    assert server.post_json("/5556/ratings", [{"movieId": 2, "rating": 3.0}])[0] == 201  # no Origin: curl


def test_an_empty_list_says_why_in_the_json(shared):
    status, body, _ = shared.get("/1/ratings/top/3?min_count=100000")
    assert status == 200 and body["movies"] == [] and "the most-rated has" in body["reason"]
    status, body, _ = shared.get("/recommend?user=1&min_count=100000")
    assert status == 200 and body["recommendations"] == [] and "the most-rated has" in body["reason"]
    assert "reason" not in shared.get("/1/ratings/top/3?min_count=0")[1]


def test_metrics_count_requests_ratings_and_store_errors_and_describe_the_version(live, csv_fixture, monkeypatch):
    """/metrics in Prometheus text format: what this process answered, posted and failed to store, and the
    version in service as the recommender sees it when scraped."""
    from prometheus_client.parser import text_string_to_metric_families

    from storage.store import StoreError

    server = live()
    for _ in range(2):
        assert server.get("/1/ratings/top/3")[0] == 200
    assert server.post_json("/6100/ratings", [{"movieId": 1, "rating": 4.0}, {"movieId": 2, "rating": 2.5}])[0] == 201
    assert server.get("/no/such/route")[0] == 404

    def full(user, ratings, *once):
        raise StoreError("database or disk is full")

    monkeypatch.setattr(server.recommender.store, "append", full)
    assert server.post_json("/6101/ratings", [{"movieId": 1, "rating": 4.0}])[0] == 503
    status, _, raw = server.call("GET", "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(raw.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))))

    top = "/<user_id>/ratings/top/<count>"
    assert value("recommender_http_requests_total", endpoint=top, method="GET", status="200") == 2
    assert value("recommender_http_request_seconds_count", endpoint=top) == 2
    assert value("recommender_http_requests_total", endpoint="/<user_id>/ratings", method="POST", status="201") == 1
    assert value("recommender_http_requests_total", endpoint="/<user_id>/ratings", method="POST", status="503") == 1
    assert value("recommender_http_requests_total", endpoint="unmatched", method="GET", status="404") == 1
    assert value("recommender_posted_ratings_total") == 2  # the refused one is not counted
    assert value("recommender_store_errors_total") == 1
    rec = server.recommender
    group = rec.store.group  # the accepted post went through a group commit; the refused one never reached it
    assert value("recommender_store_commits_total") == group.groups >= 1
    assert value("recommender_store_grouped_requests_total") == group.requests >= group.groups
    assert value("recommender_model_version") == rec.version
    assert value("recommender_pending_ratings") == 2
    assert value("recommender_trained_ratings") == len(csv_fixture.ratings) + 2
    assert {model for (name, labels), _ in samples.items() if name == "recommender_fit_seconds"
            for _, model in labels} == {"rating", "ranking", "neighbours", "total"}
    assert sum(v for (name, _), v in samples.items() if name == "recommender_trainer_state") == 1
    assert value("recommender_model_age_seconds") >= 0
    live = rec.status()["live_quality"][0]  # the accepted post, scored before it was stored
    assert value("recommender_live_ratings", version=str(rec.version)) == live["ratings"] == 2
    assert value("recommender_live_rmse", version=str(rec.version)) == live["rmse"]


def test_metrics_are_an_operator_endpoint_when_a_token_is_set(live):
    server = live(api_token="admin-s3cret")
    assert server.get("/metrics")[0] == 401
    user = server.call("POST", "/admin/users/5/token", headers={"Authorization": "Bearer admin-s3cret"})[1]["token"]
    assert server.call("GET", "/metrics", headers={"Authorization": f"Bearer {user}"})[0] == 403
    assert server.call("GET", "/metrics", headers={"Authorization": "Bearer admin-s3cret"})[0] == 200


def test_operator_status_json_lists_versions_with_fits_and_live_figures(live):
    server = live()
    assert server.post_json("/6200/ratings", [{"movieId": 1, "rating": 4.0}])[0] == 201
    status, body, _ = server.get("/status.json")
    assert status == 200
    rec = server.recommender
    [version] = body["versions"]
    assert version["version"] == rec.version and version["serving"] is True
    assert set(version["fit_seconds"]) == {"rating", "ranking", "neighbours", "total"}
    assert version["live"]["ratings"] == 1 and version["live"]["rmse"] is not None
    assert body["serving"]["model_version"] == rec.version and body["serving"]["pending_ratings"] == 1
    assert body["store"]["bytes"] > 0 and body["store"]["last_request"] == rec.store.last_seq
    page = server.get("/status")
    assert page[0] == 200 and b"status.js" in page[2]


def test_operator_status_needs_the_admin_token_when_one_is_set(live):
    server = live(api_token="admin-s3cret")
    assert server.get("/status.json")[0] == 401
    assert server.call("GET", "/status.json", headers={"Authorization": "Bearer admin-s3cret"})[0] == 200
    assert server.get("/status")[0] == 200  # the page itself asks for the token, then reads the JSON


def test_a_store_that_stops_answering_leaves_gets_answering_from_memory(live, monkeypatch):
    """Reads the store cannot answer: lists and predictions come from memory, also for a user token (checked
    from memory), /health says degraded (the store's error text, which names its host, to operators only),
    a revoked token still fails, and a POST stores nothing."""
    from contextlib import contextmanager

    from storage.store import StoreError

    server = live(api_token="admin-t")
    admin = {"Authorization": "Bearer admin-t"}
    token = server.call("POST", "/admin/users/1/token", headers=admin)[1]["token"]
    revoked = server.call("POST", "/admin/users/2/token", headers=admin)[1]["token"]
    assert server.call("DELETE", "/admin/users/2/token", headers=admin)[1]["revoked"] is True
    before = server.call("GET", "/1/ratings/top/5", headers=admin)[1]
    store = server.recommender.store

    @contextmanager
    def down():
        raise StoreError("the PostgreSQL store postgresql://x:***@db/r is not answering: Connection refused")
        yield

    monkeypatch.setattr(store, "reading", down)
    monkeypatch.setattr(store, "writing", down)
    status, now, _ = server.call("GET", "/1/ratings/top/5", headers=admin)
    assert status == 200 and now["movies"] == before["movies"]
    status, health, raw = server.call("GET", "/health")
    assert status == 200 and health["status"] == "degraded" and health["store"] == "not answering"
    assert "store_error" not in health and b"db/r" not in raw and b"PostgreSQL" not in raw
    assert health["pending_ratings"] is None
    status, health, _ = server.call("GET", "/health", headers=admin)
    assert status == 200 and "Connection refused" in health["store_error"]
    status, mine, _ = server.call("GET", "/1/ratings/top/5", headers={"Authorization": f"Bearer {token}"})
    assert status == 200 and mine["movies"] == before["movies"]
    status, body, _ = server.call("GET", "/2/ratings/top/5", headers={"Authorization": f"Bearer {revoked}"})
    assert status == 401 and "Bearer" in body["error"]
    status, body, _ = server.post_json("/1/ratings", [{"movieId": 1, "rating": 4.0}], headers=admin)
    assert status == 503 and "nothing was saved" in body["error"]
    monkeypatch.undo()
    assert server.call("GET", "/health")[1]["status"] == "ok"
    assert all(e.user != 1 or (1, 4.0) not in e.ratings for e in store.entries())


def test_a_retried_post_with_its_idempotency_key_is_stored_once_and_answered_as_the_first(live):
    """The client lost the answer (a connection cut during COMMIT): the retry with the same Idempotency-Key
    stores nothing and gets the first answer with "replayed"; the same key with another body is a 422."""
    server = live()
    store = server.recommender.store
    key = {"Idempotency-Key": "9b2f6a0e-retry-1"}
    status, first, _ = server.post_json("/4400/ratings", [{"movieId": 1, "rating": 4.0}], headers=key)
    assert status == 201 and "replayed" not in first
    status, again, _ = server.post_json("/4400/ratings", [{"movieId": 1, "rating": 4.0}], headers=key)
    assert status == 201 and again == {**first, "replayed": True}
    assert [e.ratings for e in store.entries() if e.user == 4400] == [((1, 4.0),)]
    status, body, _ = server.post_json("/4400/ratings", [{"movieId": 2, "rating": 1.0}], headers=key)
    assert status == 422 and "another request" in body["error"]
    assert server.post_json("/4401/ratings", [{"movieId": 1, "rating": 4.0}], headers=key)[0] == 201  # per user
    for bad in ("", "x" * 256, "has space"):
        status, body, _ = server.post_json("/4400/ratings", [{"movieId": 3, "rating": 2.0}],
                                           headers={"Idempotency-Key": bad})
        assert status == 400 and "Idempotency-Key" in body["error"], bad
    assert len([e for e in store.entries() if e.user == 4400]) == 1
    new_user = {"Idempotency-Key": "new-user-1"}
    status, handed, _ = server.call("POST", "/users", headers=new_user)
    assert status == 201 and server.call("POST", "/users", headers=new_user)[1] == {**handed, "replayed": True}
    assert server.call("POST", "/users")[1]["user"] == handed["user"] + 1


def test_health_without_the_admin_token_says_status_version_and_counts_only(live):
    """The trainer's pid and error text and the store's error name hosts and paths: operators only."""
    server = live(api_token="admin-h")
    server.recommender.store.set_trainer_status({"state": "failed", "pid": 4242, "host": "trainer-7",
                                                 "error": "OSError: /srv/models/x: no space left"})
    status, health, raw = server.get("/health")
    assert status == 200 and health["trainer"]["state"] == "failed" and health["model_version"] == 1
    assert b"4242" not in raw and b"/srv/models" not in raw and b"trainer-7" not in raw
    assert {"store_error", "last_retrain_error"}.isdisjoint(health) and "n_ratings" in health
    status, full, _ = server.call("GET", "/health", headers={"Authorization": "Bearer admin-h"})
    assert full["trainer"]["pid"] == 4242 and "no space left" in full["last_retrain_error"]


def test_ratings_per_post_are_capped_as_configured_and_the_cap_stores_nothing(live):
    """More ratings than --max-post-ratings in one POST is a 413 naming the cap, before any other check."""
    server = live(max_post_ratings=2)
    store = server.recommender.store
    for body, ctype in ((b"1,4\n2,3\n3,5\n", "text/plain"),
                        (json.dumps([{"movieId": m, "rating": 4} for m in (1, 2, 3)]), "application/json")):
        status, answer, _ = server.call("POST", "/6300/ratings", body, {"Content-Type": ctype})
        assert status == 413 and answer == {"error": "a request holds at most 2 ratings: send the rest in "
                                                     "further requests"}
    assert store.entries() == [] and server.recommender.rated(6300) == []
    status, answer, _ = server.call("POST", "/6300/ratings", b"movieId,rating\n1,4\n2,3\n",
                                    {"Content-Type": "text/plain"})
    assert status == 201 and answer["accepted"] == 2  # the header line is not a rating


def test_the_ratings_cap_is_a_flag_with_an_environment_variable(monkeypatch):
    from settings import build_parser

    assert build_parser().parse_args([]).max_post_ratings == 1000
    assert build_parser().parse_args(["--max-post-ratings", "50"]).max_post_ratings == 50
    monkeypatch.setenv("RECOMMENDER_MAX_POST_RATINGS", "7")
    assert build_parser().parse_args([]).max_post_ratings == 7


def _post_chunked(server, chunks, headers: dict | None = None) -> tuple[int, dict]:
    """POST ``chunks`` with Transfer-Encoding: chunked, all of it before reading the answer, as curl does."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        conn.request("POST", "/6500/ratings", body=iter(chunks), encode_chunked=True,
                     headers={"Content-Type": "text/plain", **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_chunked_body_over_the_size_cap_is_a_413_the_client_reads(live):
    """A chunked body has no length to check first or to drain by: over the cap it is a 413 (not parsed up to
    the cap), read to its end (up to the drain limit) so the client gets the answer rather than a reset;
    so is an early refusal (401) of a chunked body."""
    server = live(api_token="admin-t")
    admin = {"Authorization": "Bearer admin-t"}
    store = server.recommender.store
    chunk = b"1,4\n" * (1 << 14)  # 64 KiB
    status, answer = _post_chunked(server, [chunk] * 128, admin)  # 8 MiB: more than the socket buffers hold
    assert status == 413 and answer == {"error": "the body is larger than 1048576 bytes"}
    padded = [b"1,4\n", b"\n" * (1 << 16)] + [b"\n" * (1 << 16)] * 16 + [b"2,3\n"]  # 1 MiB and a bit
    status, answer = _post_chunked(server, padded, admin)
    assert status == 413 and "larger than" in answer["error"]
    status, answer = _post_chunked(server, [chunk] * 128)
    assert status == 401 and "Bearer" in answer["error"]
    assert store.entries() == []
    assert _post_chunked(server, [b"1,4\n", b"2,3\n"], admin)[0] == 201  # a small chunked body is read whole
    assert [(m.movie_id, r) for m, r in server.recommender.rated(6500)] == [(1, 4.0), (2, 3.0)]


def _series(raw: bytes, name: str) -> set[tuple]:
    from prometheus_client.parser import text_string_to_metric_families

    return {tuple(sorted(s.labels.items())) for f in text_string_to_metric_families(raw.decode())
            for s in f.samples if s.name == name}


def test_made_up_methods_add_no_metrics_series(live):
    """A client picks any method token: all but HTTP's are counted as ``other``, so /metrics stays small."""
    server = live()
    for n in range(5):
        assert server.call(f"M{n}", "/health")[0] == 405
        assert server.call(f"X{n}", f"/no/such/route/{n}")[0] == 404
    series = _series(server.get("/metrics")[2], "recommender_http_requests_total")
    assert {dict(labels)["method"] for labels in series} == {"other"}  # this GET is counted once answered
    assert {labels for labels in series if dict(labels)["method"] == "other"} == {
        (("endpoint", "unmatched"), ("method", "other"), ("status", "405")),
        (("endpoint", "unmatched"), ("method", "other"), ("status", "404"))}


def test_a_service_bound_to_another_loopback_address_answers_it_and_other_loopback_literals(live):
    """Any 127.0.0.0/8 address and ::1, and the address the service is bound to, are not names DNS
    rebinding can use: they are answered; other names still get a 403."""
    try:
        server = live(host="127.0.0.2")
    except OSError as exc:  # Linux routes all of 127/8 to lo; another system may not
        pytest.skip(f"cannot bind 127.0.0.2: {exc}")
    for host in (None, "127.0.0.2", "127.5.6.7:80", "[::1]:8080", "localhost"):
        status, body, _ = server.call("GET", "/health", headers={"Host": host} if host else {})
        assert status == 200, (host, body)
    for host in ("evil.example", "127.0.0.2.nip.io", "128.0.0.1"):
        status, body, _ = server.call("GET", "/health", headers={"Host": host})
        assert status == 403 and "requests for host" in body["error"], host


def test_no_answer_can_be_framed(shared):
    """Every answer (the page, JSON, static files, errors) forbids framing by another page."""
    for method, path, body in (("GET", "/", None), ("GET", "/health", None), ("GET", "/static/app.js", None),
                               ("GET", "/no/such/route", None), ("POST", "/1/ratings", b"1,9\n"),
                               ("GET", "/1/ratings/top/3", None)):
        conn = http.client.HTTPConnection(shared.host, shared.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "text/plain"} if body else {})
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        assert response.getheader("X-Frame-Options") == "DENY", path
        assert response.getheader("Content-Security-Policy") == "frame-ancestors 'none'", path


def test_framing_is_added_to_a_policy_already_set():
    from flask import Response

    from access import refuse_framing

    response = refuse_framing(Response(headers={"Content-Security-Policy": "default-src 'self';"}))
    assert response.headers["Content-Security-Policy"] == "default-src 'self'; frame-ancestors 'none'"
    kept = refuse_framing(Response(headers={"Content-Security-Policy": "frame-ancestors 'self'"}))
    assert kept.headers["Content-Security-Policy"] == "frame-ancestors 'self'"
