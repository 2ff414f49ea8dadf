"""Changing models safely with real processes: a trainer and two API processes on one folder (SQLite), and
API hosts of their own on one PostgreSQL store.  Pin and roll back, candidates, an experiment's arms on
every process, figures from either process, promote and stop, and pruning that keeps what is pinned.

How fast every process follows a change is bench/models.py's to measure (the target is 2 s; each process
reads the plan at every 1 s poll), not a timed assertion here: the tests wait for the state itself.
"""

from __future__ import annotations

import json

from processes import post_ratings, request, until

ON_REQUEST_ONLY = ("--retrain-after", "0", "--retrain-interval", "0")  # the trainer fits when asked
JSON = {"Content-Type": "application/json"}


def _post(port: int, path: str, body) -> tuple[int, dict]:
    return request(port, "POST", path, json.dumps(body).encode(), JSON)


def _serving(api) -> dict:
    return api.get("/health")[1]["serving"]


def _serves(apis, version: int, reason: str) -> None:
    until(lambda: all(_serving(api)["version"] == version and _serving(api)["reason"] == reason for api in apis),
          30, f"every process to serve version {version} ({reason})")


def _arms(api, users, movie: int) -> dict[int, tuple[str, int]]:
    out = {}
    for user in users:
        body = api.get(f"/{user}/ratings/{movie}")[1]
        out[user] = (body["arm"], body["model_version"])
    return out


def test_pin_candidate_experiment_and_promote_across_two_api_processes(servers, csv_fixture, tmp_path):
    folder = tmp_path / "m"
    trainer = servers(folder, *ON_REQUEST_ONLY, "--keep-versions", "1", role="trainer")
    a = servers(folder, role="api")
    b = servers(folder, role="api")
    assert request(a.port, "POST", "/admin/retrain")[0] == 202
    for api in (a, b):
        api.wait_for("model version 2 in service", 120)

    # Pin version 1 while 2 is the newest: both serve it, and a restarted process too.
    assert _post(b.port, "/admin/serve", {"version": 1}) == (200, {"serving": 1, "pinned": 1})
    _serves((a, b), 1, "pinned")
    movie = csv_fixture.dramas[0]
    assert a.get(f"/8/ratings/{movie}")[1]["model_version"] == 1
    b.stop()
    b = servers(folder, role="api")
    assert _serving(b)["version"] == 1 and b.get("/8/ratings/top/3")[1]["model_version"] == 1

    # A candidate with other parameters: published, not served, and the dataset's parameters stay.
    params = json.loads((folder / "params.json").read_text())
    asked = _post(a.port, "/admin/retrain", {"params": {"rating": {"rank": 6}}, "serve": False})
    assert asked[0] == 202
    trainer.wait_for("model version 3 published as a candidate", 120)
    listed = until_listed(a, 3)
    rows = {v["version"]: v for v in listed["versions"]}
    assert rows[3]["candidate"] and rows[3]["params"]["rating"]["rank"] == 6 and not rows[3]["newest"]
    assert rows[2]["newest"] and rows[1]["pinned"] and listed["serving"] == 1
    assert json.loads((folder / "params.json").read_text()) == params
    assert (folder / "versions" / "v000001").exists()  # pinned: kept, though --keep-versions is 1

    # An experiment of version 1 against the candidate: every user has the same arm on both processes.
    experiment = {"name": "rank-6", "arms": {"control": {"version": 1}, "candidate": {"version": 3}},
                  "traffic": {"control": 50, "candidate": 50}}
    assert _post(a.port, "/admin/experiments", experiment)[0] == 201
    assert _post(b.port, "/admin/experiments", {**experiment, "name": "second"})[0] == 409
    until(lambda: "arm" in b.get(f"/1/ratings/{movie}")[1], 30, "B to follow the experiment")
    users = range(7000, 7030)
    on_a, on_b = _arms(a, users, movie), _arms(b, users, movie)
    assert on_a == on_b and {arm for arm, _ in on_a.values()} == {"control", "candidate"}
    assert all(version == {"control": 1, "candidate": 3}[arm] for arm, version in on_a.values())

    # Posts on both processes add up in the figures, read from either.
    posted = {"control": 0, "candidate": 0}
    for i, user in enumerate(users):
        api = (a, b)[i % 2]
        assert post_ratings(api.port, user, [(m, 4.0) for m in csv_fixture.comedies[:2]])[0] == 201
        posted[on_a[user][0]] += 2
    for api in (a, b):
        report = api.get("/admin/experiments/rank-6")[1]
        assert {arm: report["arms"][arm]["posted"] for arm in posted} == posted
        assert report["arms"]["candidate"]["version"] == 3 and report["difference"]["candidate"]["rmse"] is not None

    # Promote the candidate: pinned everywhere, its parameters become the dataset's, the trainer fits them.
    stopped = _post(b.port, "/admin/experiments/rank-6/stop", {"promote": "candidate"})
    assert stopped[0] == 200 and not stopped[1]["running"]
    _serves((a, b), 3, "pinned")
    assert "experiment" not in a.get(f"/7000/ratings/{movie}")[1]
    trainer.wait_for("model version 4 published", 120)
    assert json.loads((folder / "params.json").read_text())["rating"]["rank"] == 6
    until(lambda: not (folder / "versions" / "v000001").exists(), 30, "version 1 to be pruned")
    assert (folder / "versions" / "v000003").exists()  # pinned: kept while 4 is the newest
    assert _post(a.port, "/admin/serve", {"version": 1})[0] == 404  # pruned: nothing changes
    assert _serving(a)["version"] == 3

    # Back to the newest.
    assert _post(a.port, "/admin/serve", {"version": "newest"}) == (200, {"serving": 4, "pinned": None})
    _serves((a, b), 4, "newest")


def until_listed(api, number: int) -> dict:
    until(lambda: any(v["version"] == number for v in api.get("/admin/versions")[1]["versions"]), 30,
          f"version {number} to be listed")
    return api.get("/admin/versions")[1]


def test_pin_and_experiment_reach_every_host_of_a_postgresql_store(servers, postgres, csv_fixture, tmp_path):
    """Hosts with folders of their own: a host that started after version 2 was replaced never had it, and
    copies it from the database once it is pinned."""
    url = postgres.create_database()
    env = {"RECOMMENDER_STORE": url}
    trainer = servers(tmp_path / "trainer-host", *ON_REQUEST_ONLY, role="trainer", env=env)
    (tmp_path / "a-host").mkdir()
    a = servers(tmp_path / "a-host", role="api", env=env)
    a.wait_for("model version 2 in service", 120)  # version 1 was the fixture's SQLite store's
    assert request(a.port, "POST", "/admin/retrain")[0] == 202
    a.wait_for("model version 3 in service", 120)
    (tmp_path / "b-host").mkdir()
    b = servers(tmp_path / "b-host", role="api", env=env)
    assert _serving(b)["version"] == 3 and not (tmp_path / "b-host" / "versions" / "v000002").exists()

    assert _post(b.port, "/admin/serve", {"version": 2}) == (200, {"serving": 2, "pinned": 2})
    _serves((a, b), 2, "pinned")
    assert (tmp_path / "b-host" / "versions" / "v000002").exists()
    assert _post(a.port, "/admin/serve", {"version": 1})[1]["error"].endswith("kept versions: 3, 2")

    experiment = {"name": "hosts", "arms": {"control": {"version": 2}, "candidate": {"version": 3}},
                  "traffic": {"control": 30, "candidate": 70}}
    assert _post(a.port, "/admin/experiments", experiment)[0] == 201
    movie = csv_fixture.dramas[1]
    until(lambda: "arm" in b.get(f"/1/ratings/{movie}")[1], 30, "B to follow the experiment")
    users = range(8000, 8020)
    on_a, on_b = _arms(a, users, movie), _arms(b, users, movie)
    assert on_a == on_b
    for user in users:
        assert post_ratings(a.port, user, [(movie, 3.5)])[0] == 201
    report = b.get("/admin/experiments/hosts")[1]
    counted = {arm: sum(1 for a_, _ in on_a.values() if a_ == arm) for arm in ("control", "candidate")}
    assert {arm: report["arms"][arm]["posted"] for arm in counted} == counted
    assert _post(b.port, "/admin/experiments/hosts/stop", {"promote": "newest"})[0] == 200
    _serves((a, b), 3, "newest")
    assert trainer.proc.poll() is None
