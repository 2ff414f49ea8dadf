"""Retrains, shutdown, disk use and settings: what a long-running service must get right."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import FAST, ROOT, quick

from model import ModelParams


@pytest.mark.slow  # several trainings
def test_the_engines_cached_ratings_survive_retrains_and_the_source_is_read_once(make_engine, csv_fixture, tmp_path):
    dataset = tmp_path / "with-a-bad-line"
    shutil.copytree(csv_fixture.path, dataset)
    with open(dataset / "ratings.csv", "a") as fh:
        fh.write("1,2,not-a-rating,0\n")
    engine = make_engine(dataset, retrain="sync", params=quick())
    assert engine.malformed.value == 1
    for round_ in range(2):
        answer = engine.add_ratings(7100 + round_, [(m, 4.5) for m in csv_fixture.comedies[:4]])
        assert answer["model_version"] == 2 + round_ and "retrain_error" not in answer
    assert engine.base_ratings.is_cached  # training did not drop the engine's cache
    assert engine.malformed.value == 1  # so the source was parsed once, not once per training


@pytest.mark.slow  # several trainings
def test_checkpoints_are_deleted_after_each_training(sc, make_engine, csv_fixture):
    from training import checkpoints_removed, fit_rating_model, packed

    where = Path(sc._jsc.sc().getCheckpointDir().get().removeprefix("file:"))

    def listing() -> set[Path]:
        return set(where.iterdir()) if where.exists() else set()

    # ALS checkpoints every 10 iterations: 11 make the rating model write one; the ranking model's 2 write none.
    params = ModelParams(replace(FAST.rating, rank=2, iterations=11), replace(FAST.ranking, rank=2, iterations=2))
    before = listing()
    engine = make_engine(csv_fixture.path, retrain="sync", params=params)
    engine.add_ratings(7200, [(m, 4.0) for m in csv_fixture.dramas[:3]])
    assert engine.model_version == 2
    # evaluate.py's tuning fits one model at a time, outside any engine: that leaves nothing either
    with packed(engine.base_ratings) as arrays:
        fit_rating_model(sc, arrays, params.rating, engine.scale)
    assert listing() - before == set()
    with checkpoints_removed(sc):  # and the guard deletes what is written inside it
        rdd = sc.parallelize(range(10))
        rdd.checkpoint()
        rdd.count()
        assert len(listing() - before) == 1
    assert listing() - before == set()


def test_a_failed_retrain_in_sync_mode_still_acknowledges_the_stored_rating(make_engine, csv_fixture, monkeypatch):
    import engine as engine_module

    def broken(*args, **kwargs):
        raise RuntimeError("executor lost")

    engine = make_engine(csv_fixture.path, retrain="sync")
    monkeypatch.setattr(engine_module, "fit_models", broken)
    answer = engine.add_ratings(7300, [(1, 4.0)])
    assert answer["accepted"] == 1 and "executor lost" in answer["retrain_error"]
    assert answer["model_version"] == 1 and engine.predict(7300, 1)["user_rating"] == 4.0
    assert [e.user for e in engine.store.entries()] == [7300]  # stored once: nothing for a client to retry


def test_closing_during_a_retrain_stops_it_before_its_next_spark_job(make_engine, csv_fixture, monkeypatch, caplog):
    import training

    started, release, ranking_calls = threading.Event(), threading.Event(), []
    real_rating = training.fit_rating_model

    def blocking_rating(*args, **kwargs):
        started.set()
        assert release.wait(60)
        return real_rating(*args, **kwargs)

    monkeypatch.setattr(training, "fit_rating_model", blocking_rating)
    monkeypatch.setattr(training, "fit_ranking_model", lambda *a, **k: ranking_calls.append(1))
    engine = make_engine(csv_fixture.path, retrain="async")
    saved = (engine.model_dir / "model.json").read_bytes()
    engine.add_ratings(7400, [(1, 4.0)])
    assert started.wait(60)
    closer = threading.Thread(target=engine.close)
    with caplog.at_level("INFO"):
        closer.start()
        assert engine._stopping.wait(10)  # the stop flag is up before the retrain may go on
        release.set()
        closer.join(60)
    assert not closer.is_alive()
    assert ranking_calls == [] and engine.model_version == 1
    assert (engine.model_dir / "model.json").read_bytes() == saved
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]
    assert any("shutting down" in r.getMessage() for r in caplog.records)


def test_closing_cancels_the_retrains_later_spark_jobs_too(make_engine, csv_fixture, monkeypatch):
    import engine as engine_module
    import training

    started, cancelled, outcome = threading.Event(), threading.Event(), []
    real_cancel = engine_module.RecommendationEngine._cancel_retrain_jobs

    def cancel(self):
        real_cancel(self)
        cancelled.set()

    def two_jobs(sc, ratings, *args, **kwargs):  # a fit is many jobs; close() comes between two of them
        ratings.count()
        started.set()
        assert cancelled.wait(60)
        try:
            ratings.map(lambda t: t).count()
            outcome.append("ran")
        except Exception:
            outcome.append("cancelled")
            raise

    monkeypatch.setattr(engine_module.RecommendationEngine, "_cancel_retrain_jobs", cancel)
    monkeypatch.setattr(training, "fit_rating_model", two_jobs)
    engine = make_engine(csv_fixture.path, retrain="async")
    engine.add_ratings(7450, [(1, 4.0)])
    assert started.wait(60)
    engine.close()
    assert outcome == ["cancelled"] and engine.model_version == 1


def test_closing_an_idle_engine_says_nothing_about_cancelling(make_engine, csv_fixture, caplog):
    engine = make_engine(csv_fixture.path, retrain="async")
    with caplog.at_level("INFO"):
        engine.close()
    assert not any("cancel" in r.getMessage() for r in caplog.records)


def test_labels_must_match_the_pairs(make_engine, csv_fixture):
    engine = make_engine(csv_fixture.path)
    with pytest.raises(ValueError):  # a short label list must not leave the tail unchecked
        engine.check_ratings([(1, 4.0), (424242, 4.0)], ["line 1"])


def test_tuning_flags_and_their_environment_fallbacks(monkeypatch):
    from server import build_parser

    args = build_parser().parse_args(["--no-tune", "--tune-budget", "30"])
    assert (args.no_tune, args.tune_budget) == (True, 30.0)
    monkeypatch.setenv("RECOMMENDER_NO_TUNE", "1")
    monkeypatch.setenv("RECOMMENDER_TUNE_BUDGET", "45")
    assert (build_parser().parse_args([]).no_tune, build_parser().parse_args([]).tune_budget) == (True, 45.0)
    monkeypatch.setenv("RECOMMENDER_NO_TUNE", "off")
    assert build_parser().parse_args([]).no_tune is False


@pytest.mark.parametrize("variable,value,message", [
    ("RECOMMENDER_RETRAIN", "sometimes", "RECOMMENDER_RETRAIN='sometimes': choose from async, sync, off"),
    ("RECOMMENDER_PORT", "http", "RECOMMENDER_PORT='http': expected a whole number"),
    ("RECOMMENDER_THREADS", "0", "RECOMMENDER_THREADS='0': expected a whole number from 1"),
    ("RECOMMENDER_HEAP", "lots", "RECOMMENDER_HEAP='lots': expected a size such as 512m"),
    ("RECOMMENDER_SCALE", "1-5", "RECOMMENDER_SCALE='1-5': expected LOW,HIGH,STEP"),
    ("RECOMMENDER_TUNE_BUDGET", "-5", "RECOMMENDER_TUNE_BUDGET='-5': expected a number of seconds"),
    ("RECOMMENDER_NO_TUNE", "maybe", "RECOMMENDER_NO_TUNE='maybe': expected 1 or 0"),
])
def test_bad_environment_settings_are_one_line_errors(monkeypatch, capsys, variable, value, message):
    from server import build_parser

    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_bad_environment_setting_stops_the_server_before_spark(tmp_path):
    out = subprocess.run([sys.executable, "server.py", "--model-dir", str(tmp_path)], cwd=ROOT,
                         env={**os.environ, "RECOMMENDER_RETRAIN": "bogus"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "RECOMMENDER_RETRAIN='bogus'" in out.stderr
    assert "Spark" not in out.stdout + out.stderr


def test_api_token_from_a_file(tmp_path):
    from server import build_parser, read_token

    (tmp_path / "token").write_text("s3cret\n")
    assert read_token(build_parser().parse_args(["--api-token-file", str(tmp_path / "token")])) == "s3cret"
    (tmp_path / "empty").write_text("\n")
    for argv, message in ((["--api-token-file", str(tmp_path / "empty")], "must hold one token"),
                          (["--api-token-file", str(tmp_path / "none")], "cannot read"),
                          (["--api-token", "x", "--api-token-file", str(tmp_path / "token")], "not both")):
        with pytest.raises(ValueError, match=message):
            read_token(build_parser().parse_args(argv))


def test_the_app_is_never_in_debug_mode_even_when_flask_debug_is_set(monkeypatch, make_engine, csv_fixture):
    from app import create_app

    monkeypatch.setenv("FLASK_DEBUG", "1")  # Flask would turn its debugger on from this
    app = create_app(make_engine(csv_fixture.path))
    assert app.debug is False
    response = app.test_client().get("/1/ratings/top/x")
    assert response.status_code == 400 and json.loads(response.data) == {
        "error": "count must be a whole number from 1 to 1000, not 'x'"}
