"""People's data and movie rules with real processes: a trainer and two API processes on one folder (SQLite),
and API hosts of their own on one PostgreSQL store.  What one process is told, every other one serves at
once (its next request's freshness read), and the fit that forgetting asks for leaves no trace of the user
in the version's files."""

from __future__ import annotations

import json

import numpy as np
from processes import post_ratings, request, until

from storage.versions import ModelVersions

ON_REQUEST_ONLY = ("--retrain-after", "0", "--retrain-interval", "0")  # the trainer fits when asked
JSON = {"Content-Type": "application/json"}


def _ids(api, path: str) -> list[int]:
    body = api.get(path)[1]
    return [m["movieId"] for m in body.get("movies") or body.get("recommendations") or []]


def _no_trace(folder, number: int, user: int, withdrawn: tuple[int, int], fx) -> None:
    """Version ``number`` in ``folder`` holds no factor, history or count of ``user``, nor the withdrawn
    (user, movie) rating: its counts are the dataset's less theirs."""
    version, lease = ModelVersions(folder).load(number)
    try:
        assert version.histories.of(user) is None
        assert version.models.rating.user_row(user) is None and version.models.ranking.user_row(user) is None
        other, movie = withdrawn
        row = version.catalogue.row(movie)
        assert row not in version.histories.of(other).rows.tolist()
        expected = np.zeros(len(version.catalogue), dtype=np.int64)
        for u, m, _ in fx.ratings:
            if u != user and (u, m) != withdrawn:
                expected[version.catalogue.row(m)] += 1
        assert np.array_equal(np.asarray(version.histories.counts), expected)
    finally:
        lease.release()


def _steps(a, b, fx) -> tuple[int, int, int]:
    """Forget, withdraw, hide and a movie rule on one process, each seen on the other at once; the movie
    the rule hides, and the (user, movie) withdrawn."""
    forgotten, other = 3, 5
    assert post_ratings(a.port, forgotten, [(fx.comedies[0], 4.0), (fx.dramas[0], 2.0)])[0] == 201
    assert b.get(f"/{forgotten}/ratings")[1]["ratings"]
    withdrawn = next(m for u, m, _ in fx.ratings if u == other)
    assert request(b.port, "DELETE", f"/{other}/ratings/{withdrawn}")[0] == 200
    assert withdrawn not in [r["movieId"] for r in a.get(f"/{other}/ratings")[1]["ratings"]]
    top = _ids(a, "/8/ratings/top/3?min_count=0")
    assert request(a.port, "POST", "/8/hidden", json.dumps([top[0]]).encode(), JSON)[0] == 200
    assert top[0] not in _ids(b, "/8/ratings/top/40?min_count=0")
    assert request(b.port, "PUT", f"/admin/movies/{top[1]}", b'{"hidden": true}', JSON)[0] == 200
    for api in (a, b):
        assert top[1] not in _ids(api, "/9/ratings/top/40?min_count=0")
        assert top[1] not in _ids(api, "/recommend?user=10&n=40&min_count=0")
    status, body = request(a.port, "DELETE", f"/{forgotten}/ratings")
    assert status == 200 and body["posted_removed"] == 2
    assert b.get(f"/{forgotten}/ratings")[1]["ratings"] == []
    assert b.get(f"/{forgotten}/ratings/top/3?min_count=0")[1]["fallback"] == "popular"
    assert b.get(f"/{forgotten}/ratings/{fx.comedies[0]}")[1]["user_rating"] is None
    return top[1], forgotten, withdrawn


def test_forget_hide_and_rules_on_one_process_are_served_by_the_other_and_the_next_fit_forgets(
        servers, csv_fixture, tmp_path):
    folder = tmp_path / "m"
    trainer = servers(folder, *ON_REQUEST_ONLY, role="trainer")
    a = servers(folder, role="api")
    b = servers(folder, role="api")
    ruled, forgotten, withdrawn = _steps(a, b, csv_fixture)
    trainer.wait_for("model version 2 published", 120)  # forgetting asked for a fit
    until(lambda: b.get("/health")[1]["serving"]["version"] == 2, 30, "B to serve version 2")
    _no_trace(folder, 2, forgotten, (5, withdrawn), csv_fixture)
    assert b.get(f"/{forgotten}/ratings")[1]["ratings"] == []
    assert ruled not in _ids(b, "/9/ratings/top/40?min_count=0")  # the rule outlives the fit
    b.stop()
    b = servers(folder, role="api")  # and a restart
    assert ruled not in _ids(b, "/9/ratings/top/40?min_count=0")
    assert post_ratings(b.port, forgotten, [(1, 3.0)])[0] == 201  # posting again starts afresh
    assert [r["movieId"] for r in a.get(f"/{forgotten}/ratings")[1]["ratings"]] == [1]


def test_forgetting_reaches_every_host_of_a_postgresql_store(servers, postgres, csv_fixture, tmp_path):
    url = postgres.create_database()
    env = {"RECOMMENDER_STORE": url}
    trainer = servers(tmp_path / "trainer-host", *ON_REQUEST_ONLY, role="trainer", env=env)
    (tmp_path / "a-host").mkdir()
    a = servers(tmp_path / "a-host", role="api", env=env)
    a.wait_for("model version 2 in service", 120)  # version 1 was the fixture's SQLite store's
    (tmp_path / "b-host").mkdir()
    b = servers(tmp_path / "b-host", role="api", env=env)
    _, forgotten, withdrawn = _steps(a, b, csv_fixture)
    trainer.wait_for("model version 3 published", 120)
    until(lambda: b.get("/health")[1]["serving"]["version"] == 3, 30, "B to serve version 3")
    _no_trace(tmp_path / "b-host", 3, forgotten, (5, withdrawn), csv_fixture)  # the copy B took from the database
