"""Changing models safely, in one process over HTTP: list versions, pin and roll back, experiments and their
figures, and every bad body refused with nothing changed.  (tests/test_model_changes.py runs the same with
real processes, and across hosts on PostgreSQL.)"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import LiveServer, copy_model

from serving.recommender import Recommender
from storage.sqlite import SQLiteStore
from storage.steering import Steering
from storage.versions import ModelVersions


def publish_variant(model_dir, shift: float) -> int:
    """Publish a copy of the newest version with every movie's bias moved by ``shift`` (another model: its
    predictions differ by about that), as if the trainer had; its number."""
    store = SQLiteStore(Path(model_dir) / "ratings.db")
    versions = ModelVersions(model_dir, protect=Steering(store).protected)  # as the trainer's
    version, lease = versions.load()
    try:
        models = version.models
        models = dataclasses.replace(models, rating=dataclasses.replace(
            models.rating, movie_bias=np.asarray(models.rating.movie_bias) + shift))
        meta = {k: v for k, v in version.meta.items() if k not in ("files", "version", "format", "created")}
        try:
            return versions.publish(models, version.catalogue, version.histories, meta,
                                    announce=lambda n: store.record_version(n, version.seq))
        finally:
            store.close()
    finally:
        lease.release()


@pytest.fixture
def two(fixture_model, tmp_path):
    """Two recommenders (two API processes' worth) on one folder holding versions 1 and 2, each behind a live
    server; versions 1 and 2 differ by half a star in every movie's bias."""
    folder = copy_model(fixture_model, tmp_path / "m")
    assert publish_variant(folder, 0.5) == 2
    made = []
    for _ in range(2):
        rec = Recommender(folder).start(watch=False)
        made.append((rec, LiveServer(rec)))
    yield made
    for rec, server in made:
        server.stop()
        rec.close()


def _everyone_follows(pairs) -> None:
    for rec, _ in pairs:  # what each process's watcher does within a poll
        rec.refresh()


def test_pin_serves_an_older_version_everywhere_and_newest_goes_back(two, csv_fixture):
    (a, web_a), (b, web_b) = two
    status, listed, _ = web_a.get("/admin/versions")
    assert status == 200 and listed["serving"] == 2 and listed["pinned"] is None and listed["reason"] == "newest"
    assert [v["version"] for v in listed["versions"]] == [2, 1]
    newest = listed["versions"][0]
    assert newest["newest"] and not newest["pinned"] and newest["params"]["rating"]["rank"] == 4
    assert set(newest) >= {"created_at", "fit_seconds", "n_ratings", "validation", "live", "experiment"}

    status, body, _ = web_a.post_json("/admin/serve", {"version": 1})
    assert status == 200 and body == {"serving": 1, "pinned": 1}
    assert a.version == 1  # the process that answered serves it before answering
    _everyone_follows(two)
    movie = csv_fixture.dramas[0]
    for web in (web_a, web_b):
        assert web.get(f"/5/ratings/{movie}")[1]["model_version"] == 1
        assert web.get("/5/ratings/top/3")[1]["model_version"] == 1
        serving = web.get("/health")[1]["serving"]
        assert serving["version"] == 1 and serving["reason"] == "pinned" and serving["newest"] == 2
    metrics = web_b.call("GET", "/metrics")[2].decode()
    assert 'recommender_serving_version{arm="",experiment="",reason="pinned"} 1.0' in metrics

    # A restart keeps the pin: it is in the store.
    fresh = Recommender(a.model_dir).start(watch=False)
    try:
        assert fresh.version == 1
    finally:
        fresh.close()

    assert web_b.post_json("/admin/serve", {"version": "newest"})[1] == {"serving": 2, "pinned": None}
    _everyone_follows(two)
    assert all(web.get(f"/5/ratings/{movie}")[1]["model_version"] == 2 for web in (web_a, web_b))


def test_a_pinned_version_is_never_pruned(two):
    (a, web_a), _ = two
    assert web_a.post_json("/admin/serve", {"version": 1})[0] == 200
    for rec, _ in two:
        rec.close()  # no process holds version 1 now: only the pin keeps it
    store = SQLiteStore(a.model_dir / "ratings.db")
    folder = ModelVersions(a.model_dir, keep=1, protect=Steering(store).protected)
    for shift in (0.1, 0.2):
        publish_variant(a.model_dir, shift)
    folder.prune()
    assert folder.numbers() == [1, 4] and folder.current() == 4
    store.close()


def test_an_unknown_version_is_a_404_listing_the_kept_ones_and_changes_nothing(two):
    (a, web_a), _ = two
    for body, status, message in [({"version": 9}, 404, "kept versions: 2, 1"),
                                  ({"version": "9"}, 400, "version must be"),
                                  ({"version": True}, 400, "version must be"),
                                  ({"number": 1}, 400, 'expected {"version"'),
                                  ([1], 400, "JSON object")]:
        got, answer, _ = web_a.post_json("/admin/serve", body)
        assert got == status and message in answer["error"], (body, answer)
    assert a.steering.plan() == {"pinned": None, "experiment": None} and a.version == 2


EXPERIMENT = {"name": "bias", "arms": {"control": {"version": 1}, "candidate": {"version": 2}},
              "traffic": {"control": 50, "candidate": 50}}


def test_an_experiment_splits_users_the_same_way_on_both_processes(two, csv_fixture):
    (a, web_a), (b, web_b) = two
    status, started, _ = web_a.post_json("/admin/experiments", EXPERIMENT)
    assert status == 201 and started["running"] and set(started["arms"]) == {"control", "candidate"}
    _everyone_follows(two)
    rows = {v["version"]: v for v in web_b.get("/admin/versions")[1]["versions"]}
    assert rows[1]["experiment"] == {"name": "bias", "arms": ["control"]} and rows[1]["serving"]
    assert rows[2]["experiment"] == {"name": "bias", "arms": ["candidate"]}
    movie = csv_fixture.comedies[0]
    arms = {}
    for user in range(1, 41):
        seen = []
        for web in (web_a, web_b):
            one = web.get(f"/{user}/ratings/{movie}")[1]
            top = web.get(f"/{user}/ratings/top/3")[1]
            rec = web.get(f"/recommend?user={user}&n=2")[1]
            similar = web.get(f"/movies/{movie}/similar?user={user}&count=2")[1]
            for answer in (one, top, rec, similar):
                assert answer["experiment"] == "bias"
                assert answer["model_version"] == EXPERIMENT["arms"][answer["arm"]]["version"]
            seen.append(one["arm"])
            assert {top["arm"], rec["arm"], similar["arm"]} == {one["arm"]}
        assert seen[0] == seen[1]
        arms[user] = seen[0]
    assert set(arms.values()) == {"control", "candidate"}
    assert "experiment" not in web_a.get(f"/movies/{movie}/similar")[1]  # no user: no arm
    # The arms' versions answer differently: half a star apart in every movie's bias.
    control = next(u for u, arm in arms.items() if arm == "control")
    one = web_a.get(f"/{control}/ratings/{movie}")[1]["predicted_rating"]
    with_v2 = b.loader.view.served[2].snapshot.predicted_ratings(
        b.loader.view.served[2].snapshot.user_vectors(control), np.array([b.current().row(movie)]))[0]
    assert with_v2 != pytest.approx(one, abs=0.05)
    assert web_a.post_json("/admin/experiments", {**EXPERIMENT, "name": "other"})[0] == 409


def test_figures_per_arm_add_up_the_posts_of_both_processes(two, csv_fixture):
    """A scripted stream: users read a list and a prediction on one process and post on the other; the
    figures from either process match what the test computes by hand from the predictions it read."""
    (a, web_a), (b, web_b) = two
    assert web_a.post_json("/admin/experiments", EXPERIMENT)[0] == 201
    _everyone_follows(two)
    expected = {arm: {"errors": [], "liked": 0, "hits": 0, "users": set(), "lists": 0} for arm in ("control",
                                                                                                     "candidate")}
    for i, user in enumerate(range(900, 912)):
        shows, posts = (web_a, web_b) if i % 2 else (web_b, web_a)
        top = shows.get(f"/{user}/ratings/top/4?min_count=0")[1]
        arm = top["arm"]
        e = expected[arm]
        e["users"].add(user)
        e["lists"] += 1
        listed = [m["movieId"] for m in top["movies"]]
        assert shows.get("/admin/experiments/bias")[0] == 200  # writes this process's lists now
        movies = [listed[0], listed[1], next(m for m in csv_fixture.dramas if m not in listed)]
        ratings = [5.0, 2.0 + (i % 3), 4.5]
        pairs = []
        for movie, rating in zip(movies, ratings):
            predicted = posts.get(f"/{user}/ratings/{movie}")[1]["predicted_rating"]
            pairs.append({"movieId": movie, "rating": rating})
            e["errors"].append(predicted - rating)
            if rating >= 4:
                e["liked"] += 1
                e["hits"] += movie in listed
        answer = posts.post_json(f"/{user}/ratings", pairs)[1]
        assert answer["arm"] == arm and answer["model_version"] == EXPERIMENT["arms"][arm]["version"]
        # The predictions were read one at a time before the post: nothing between changed them.
    for web in (web_a, web_b):
        report = web.get("/admin/experiments/bias")[1]
        assert report["running"] and report["control"] == "control" and report["traffic"] == EXPERIMENT["traffic"]
        for arm, e in expected.items():
            got = report["arms"][arm]
            n = len(e["errors"])
            assert (got["users"], got["lists"], got["posted"]) == (len(e["users"]), e["lists"], n)
            assert got["rmse"] == pytest.approx(math.sqrt(sum(x * x for x in e["errors"]) / n), abs=2e-4)
            assert got["mae"] == pytest.approx(sum(abs(x) for x in e["errors"]) / n, abs=2e-4)
            assert (got["liked"], got["hits"]) == (e["liked"], e["hits"])
            assert got["hit_rate"] == pytest.approx(e["hits"] / e["liked"], abs=1e-4)
            low, high = got["rmse_interval"]
            assert low <= got["rmse"] <= high
        diff = report["difference"]["candidate"]
        assert diff["rmse"] == pytest.approx(report["arms"]["candidate"]["rmse"] - report["arms"]["control"]["rmse"],
                                             abs=2e-4)
        assert diff["rmse_interval"][0] <= diff["rmse"] <= diff["rmse_interval"][1]


def test_stop_with_promote_pins_the_arm_and_keeps_its_parameters_for_the_trainer(two):
    (a, web_a), (b, web_b) = two
    assert web_a.post_json("/admin/experiments", EXPERIMENT)[0] == 201
    status, stopped, _ = web_b.post_json("/admin/experiments/bias/stop", {"promote": "candidate"})
    assert status == 200 and not stopped["running"] and stopped["outcome"]["promoted"] == "candidate"
    assert b.version == 2 and b.steering.plan()["pinned"] == 2
    promoted = b.steering.promoted()
    assert promoted["version"] == 2 and promoted["params"]["rating"]["rank"] == 4
    assert web_a.post_json("/admin/experiments/bias/stop", {})[0] == 409  # stopped already
    assert web_a.get("/admin/experiments/nope")[0] == 404
    listed = web_a.get("/admin/experiments")[1]["experiments"]
    assert [e["name"] for e in listed] == ["bias"] and listed[0]["stopped_at"]
    status, again, _ = web_a.post_json("/admin/experiments", EXPERIMENT)
    assert status == 409 and "was run already" in again["error"]  # a name is used once
    assert web_a.post_json("/admin/experiments", {**EXPERIMENT, "name": "bias-2"})[0] == 201
    assert web_a.post_json("/admin/experiments/bias-2/stop", {"promote": "newest"})[1]["outcome"]["pinned"] is None
    assert a.steering.plan() == {"pinned": None, "experiment": None}


@pytest.mark.parametrize("change, status, message", [
    ({"traffic": {"control": 50, "candidate": 40}}, 400, "sum to 100"),
    ({"traffic": {"control": 50}}, 400, "every arm"),
    ({"traffic": {"control": 50.5, "candidate": 49.5}}, 400, "whole percentage"),
    ({"arms": {"control": {"version": 1}, "candidate": {}}}, 400, "'candidate' must be"),
    ({"arms": {"control": {"version": 1}}, "traffic": {"control": 100}}, 400, "2 to 10 arms"),
    ({"arms": {"control": {"version": 1}, "candidate": {"version": 7}}}, 404, "kept versions: 2, 1"),
    ({"name": "no spaces please"}, 400, "name must be"),
    ({"name": None}, 400, "name must be"),
    ({"surprise": 1}, 400, "unknown key(s): surprise"),
    ({"control": "treatment"}, 400, "control must be one of"),
])
def test_bad_experiments_are_4xx_and_start_nothing(two, change, status, message):
    (a, web_a), _ = two
    got, answer, _ = web_a.post_json("/admin/experiments", {**EXPERIMENT, **change})
    assert got == status and message in answer["error"], answer
    assert a.steering.plan() == {"pinned": None, "experiment": None} and a.steering.experiments() == []


def test_operator_endpoints_need_the_admin_token_when_one_is_set(fixture_model, tmp_path):
    folder = copy_model(fixture_model, tmp_path / "m")
    rec = Recommender(folder).start(watch=False)
    server = LiveServer(rec, api_token="admin-s3cret")
    try:
        for method, path, body in [("GET", "/admin/versions", None), ("POST", "/admin/serve", {"version": 1}),
                                   ("POST", "/admin/experiments", EXPERIMENT),
                                   ("GET", "/admin/experiments/bias", None),
                                   ("POST", "/admin/experiments/bias/stop", {"promote": "candidate"}),
                                   ("POST", "/admin/retrain", {"params": {"rating": {"rank": 8}}, "serve": False})]:
            status, answer, _ = server.call(method, path, None if body is None else json.dumps(body),
                                            {"Content-Type": "application/json"})
            assert status == 401 and "error" in answer, (path, answer)
        assert rec.steering.plan() == {"pinned": None, "experiment": None}
        assert rec.steering.candidate_request() is None
        status, listed, _ = server.call("GET", "/admin/versions", None, {"Authorization": "Bearer admin-s3cret"})
        assert status == 200 and listed["serving"] == 1
    finally:
        server.stop()
        rec.close()


def test_a_candidate_request_is_checked_before_the_trainer_sees_it(two):
    (a, web_a), _ = two
    for body, message in [({"params": {"rating": {"rank": 4}, "rnking": {}}}, "rnking"),
                          ({"params": {"rating": {"rnak": 4}}}, "rnak"),
                          ({"serve": "no"}, "serve must be true or false"),
                          ({"params": {"rating": {"rank": -1}}, "serve": False}, "rating rank"),
                          ({"params": {"ranking": {"alpha": "lots"}}}, "ranking alpha"),
                          ({"params": {"rating": {"rank": 16}}, "when": "now"}, "when")]:
        status, answer, _ = web_a.post_json("/admin/retrain", body)
        assert status == 400 and message in answer["error"], answer
    assert a.steering.candidate_request() is None
    status, asked, _ = web_a.post_json("/admin/retrain", {"params": {"rating": {"rank": 16}}, "serve": False})
    assert status == 202 and asked["serve"] is False and asked["params"]["rating"]["rank"] == 16
    request = a.steering.candidate_request()
    assert request["serve"] is False and request["params"]["rating"]["rank"] == 16
    assert a.store.retrain_requested() is None  # a candidate, not the dataset's own fit


def test_lists_not_written_yet_survive_a_store_that_fails(two, monkeypatch):
    """A list served in the experiment stays in memory until the store takes it: a flush that fails keeps
    it, and so does a POST whose transaction failed after taking it (503, nothing stored)."""
    import sqlite3

    from storage import steering

    (a, web_a), _ = two
    assert web_a.post_json("/admin/experiments", EXPERIMENT)[0] == 201
    web_a.get("/950/ratings/top/3?min_count=0")
    real_writing = a.store.writing

    def failing():
        raise sqlite3.OperationalError("disk I/O error")

    def refused(db, rows):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(steering.Steering, "write_ratings", staticmethod(refused))
    status, answer, _ = web_a.post_json("/950/ratings", [{"movieId": 1, "rating": 4.0}])
    assert status == 503 and a.store.entries() == []  # nothing stored, the list taken back
    monkeypatch.undo()
    web_a.get("/950/ratings/top/3?min_count=0")
    monkeypatch.setattr(a.store, "writing", lambda: _raising(failing))
    with pytest.raises(Exception, match="disk I/O"):
        a.experiments.flush()
    monkeypatch.setattr(a.store, "writing", real_writing)
    assert a.experiments.flush() == 1
    report = web_a.get("/admin/experiments/bias")[1]
    assert sum(arm["lists"] for arm in report["arms"].values()) == 2
    assert sum(arm["users"] for arm in report["arms"].values()) == 1


class _raising:
    """A context manager that fails on entry, as a store's ``writing()`` does when the disk fails."""

    def __init__(self, fail):
        self.fail = fail

    def __enter__(self):
        self.fail()

    def __exit__(self, *exc):
        return False


def test_a_pin_is_refused_while_an_experiment_serves_every_user(two):
    (a, web_a), _ = two
    assert web_a.post_json("/admin/experiments", EXPERIMENT)[0] == 201
    for body in ({"version": 1}, {"version": "newest"}):
        status, answer, _ = web_a.post_json("/admin/serve", body)
        assert status == 409 and "'bias' is running" in answer["error"]
    assert a.steering.plan()["pinned"] is None


def test_an_arm_its_version_cannot_serve_here_is_answered_but_not_counted(two, csv_fixture):
    """Version 2 damaged on this host after the experiment started: its arm's users get version 1's answers,
    marked with their arm, and nothing of them is recorded against the arm (its figures are version 2's)."""
    (a, web_a), _ = two
    assert web_a.post_json("/admin/experiments", EXPERIMENT)[0] == 201
    arrays = a.versions.path(2) / "model-movie_factors.npy"
    data = bytearray(arrays.read_bytes())
    data[-1] ^= 0xFF
    arrays.write_bytes(bytes(data))
    assert web_a.post_json("/admin/experiments", {**EXPERIMENT, "name": "again"})[0] == 409
    fresh = Recommender(a.model_dir).start(watch=False)  # loads what the plan names: version 2 fails
    server = LiveServer(fresh)
    try:
        movie = csv_fixture.comedies[0]
        arms = {u: server.get(f"/{u}/ratings/{movie}")[1] for u in range(1, 21)}
        stood_in = [u for u, body in arms.items() if body["arm"] == "candidate"]
        assert stood_in and all(arms[u]["model_version"] == 1 for u in stood_in)
        for user in range(1, 21):
            server.get(f"/{user}/ratings/top/3?min_count=0")
            assert server.post_json(f"/{user}/ratings", [{"movieId": movie, "rating": 4.0}])[0] == 201
        report = server.get("/admin/experiments/bias")[1]["arms"]
        assert report["candidate"]["posted"] == 0 and report["candidate"]["lists"] == 0
        assert report["control"]["posted"] == report["control"]["lists"] == 20 - len(stood_in)
        assert "checksum" in fresh.status()["serving"]["load_errors"]["2"]
    finally:
        server.stop()
        fresh.close()


def test_a_rerating_counts_once_and_nothing_counts_after_the_stop(two, csv_fixture):
    (a, web_a), (b, web_b) = two
    assert web_a.post_json("/admin/experiments", EXPERIMENT)[0] == 201
    _everyone_follows(two)
    movie = csv_fixture.comedies[1]
    for rating in (1.0, 5.0, 1.0, 5.0):  # one user posting one movie again and again
        assert web_a.post_json("/960/ratings", [{"movieId": movie, "rating": rating}])[0] == 201
    arms = web_a.get("/admin/experiments/bias")[1]["arms"]
    assert sum(arm["posted"] for arm in arms.values()) == 1
    assert web_a.post_json("/admin/experiments/bias/stop", {})[0] == 200
    web_b.get("/961/ratings/top/3?min_count=0")  # B has not followed the stop yet: still in the experiment
    assert web_b.post_json("/961/ratings", [{"movieId": movie, "rating": 4.0}])[0] == 201
    b.experiments.flush()
    after = web_a.get("/admin/experiments/bias")[1]
    assert sum(arm["posted"] for arm in after["arms"].values()) == 1
    assert sum(arm["lists"] for arm in after["arms"].values()) == sum(arm["lists"] for arm in arms.values())


def test_a_process_that_starts_while_the_store_is_down_serves_the_last_plan(two, monkeypatch):
    (a, web_a), _ = two
    assert web_a.post_json("/admin/serve", {"version": 1})[0] == 200
    from storage.store import StoreError

    def down(*args, **kwargs):
        raise StoreError("the ratings store is not answering")

    monkeypatch.setattr(Steering, "plan", down)
    fresh = Recommender(a.model_dir)
    try:
        fresh.start(watch=False)
        assert fresh.version == 1  # pinned, from the copy this host keeps, not the newest (2)
    finally:
        fresh.close()


def test_a_version_carries_its_serving_layouts_and_processes_map_them(fixture_model, tmp_path):
    """The arrays a snapshot serves from come with the version (layout-*.npy, checksummed) and are mapped
    from its files, so the processes of a host share them; they equal what a process would build."""
    from serving.snapshot import Snapshot

    folder = copy_model(fixture_model, tmp_path / "m")
    version, lease = ModelVersions(folder).load()
    try:
        assert set(version.layout) == set(Snapshot.LAYOUT)
        assert {f"layout-{k}.npy" for k in Snapshot.LAYOUT} <= set(json.loads(
            (folder / "versions" / "v000001" / "version.json").read_text())["files"])
        served = Snapshot.build(version.models, version.catalogue.movie_ids, layout=version.layout)
        built = Snapshot.layouts(version.models, version.catalogue.movie_ids)
        for name in Snapshot.LAYOUT:
            mapped = getattr(served, name)
            assert isinstance(mapped.base, np.memmap) or isinstance(getattr(mapped.base, "base", None), np.memmap)
            assert np.array_equal(mapped, built[name]), name
        assert served.score_columns.flags.f_contiguous
    finally:
        lease.release()
