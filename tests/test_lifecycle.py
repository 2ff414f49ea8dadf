"""The trainer over a service's life: when it fits, failures, stopping mid-fit, disk use, and settings."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import FAST, ROOT

from model import ModelParams
from trainer.loop import RetrainPolicy, Trainer, TrainerBusy, TrainerLock


def test_the_policy_fits_after_enough_ratings_or_a_long_enough_wait():
    policy = RetrainPolicy(after_ratings=None, after_fraction=0.01, interval=600)
    assert policy.threshold(100_836) == 1008 and policy.threshold(20_000_000) == 200_000
    assert policy.reason(0, 10_000, 1000) is None  # nothing new: never
    assert policy.reason(9, 10, 1000) is None
    assert "10 new rating(s)" in policy.reason(10, 10, 1000)
    assert "waited 601 s" in policy.reason(1, 601, 1000)
    assert RetrainPolicy(after_ratings=5, after_fraction=None, interval=0).reason(4, 10**6, 10) is None
    assert RetrainPolicy(after_ratings=5, after_fraction=None, interval=0).reason(5, 0, 10) is not None
    assert RetrainPolicy(None, None, 0).describe(10) == {"after_ratings": None, "interval_seconds": None}


def test_the_trainer_is_due_for_a_fit_when_the_policy_or_a_request_says_so(make_engine, csv_fixture):
    engine = make_engine(csv_fixture.path)
    trainer = Trainer(engine, RetrainPolicy(after_ratings=3, after_fraction=None, interval=0))
    assert trainer._due() is None  # the published version matches and has seen every rating
    engine.store.append(1, [(1, 4.0), (2, 3.0)])
    assert trainer._due() is None
    engine.store.append(2, [(3, 4.0)])
    assert "3 new rating(s)" in trainer._due()
    quiet = Trainer(engine, RetrainPolicy(None, None, 0))
    assert quiet._due() is None
    engine.store.request_retrain()
    assert quiet._due() == "a fit was requested"


def _run(trainer: Trainer) -> threading.Thread:
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    return thread


def test_a_failed_fit_keeps_the_version_in_service_and_is_retried(make_engine, csv_fixture, monkeypatch, caplog):
    import trainer.loop as loop

    monkeypatch.setattr(loop, "RETRY_SECONDS", 0.05)
    engine = make_engine(csv_fixture.path)
    real_fit, calls, published = engine.fit_and_publish, [], threading.Event()
    statuses = []  # every state the trainer reported, as /health shows it
    real_status = engine.store.set_trainer_status
    monkeypatch.setattr(engine.store, "set_trainer_status", lambda s: statuses.append(dict(s)) or real_status(s))

    def failing_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("executor lost (simulated)\nJava stack trace follows")
        number = real_fit()
        published.set()
        return number

    monkeypatch.setattr(engine, "fit_and_publish", failing_once)
    trainer = Trainer(engine, RetrainPolicy(None, None, 0), poll=0.05)
    engine.store.request_retrain()
    with caplog.at_level(logging.INFO):
        thread = _run(trainer)
        assert published.wait(120)
        trainer.stop()
        thread.join(60)
    assert len(calls) == 2 and engine.versions.current() == 2
    failed = [s for s in statuses if s["state"] == "failed"]
    assert failed and failed[0]["error"] == "RuntimeError: executor lost (simulated)"
    states = [s["state"] for s in statuses]
    changes = [a for a, b in zip(states, states[1:] + [None]) if a != b]  # heartbeats repeat a state
    assert changes[-4:] == ["failed", "fitting", "idle", "stopped"]
    status = engine.store.trainer_status()
    assert status["state"] == "stopped" and status["error"] is None and status["last_fit"]["version"] == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "version 1 stays in service" in errors[0] and "Java stack" not in errors[0]


def test_stopping_during_a_fit_stops_before_its_next_spark_job(make_engine, csv_fixture, monkeypatch, caplog):
    import spark.training as training

    started, release, ranking_calls = threading.Event(), threading.Event(), []
    real_rating = training.fit_rating_model

    def blocking_rating(*args, **kwargs):
        started.set()
        assert release.wait(60)
        return real_rating(*args, **kwargs)

    monkeypatch.setattr(training, "fit_rating_model", blocking_rating)
    monkeypatch.setattr(training, "fit_ranking_model", lambda *a, **k: ranking_calls.append(1))
    engine = make_engine(csv_fixture.path)
    trainer = Trainer(engine, RetrainPolicy(None, None, 0), poll=0.05)
    engine.store.request_retrain()
    with caplog.at_level(logging.INFO):
        thread = _run(trainer)
        assert started.wait(60)
        stopper = threading.Thread(target=trainer.stop)
        stopper.start()
        assert trainer.stop_event.wait(10)  # the stop flag is up before the fit may go on
        release.set()
        stopper.join(60)
        thread.join(60)
    assert not thread.is_alive() and ranking_calls == [] and engine.versions.current() == 1
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]
    stopped = [r.getMessage() for r in caplog.records if "trainer stopped" in r.getMessage()]
    assert stopped == ["trainer stopped during a fit; the version in service stays"]


def test_stopping_cancels_the_fits_later_spark_jobs_too(make_engine, csv_fixture, monkeypatch):
    import spark.training as training

    started, cancelled, outcome = threading.Event(), threading.Event(), []
    engine = make_engine(csv_fixture.path)
    real_cancel = engine.cancel

    def cancel():
        real_cancel()
        cancelled.set()

    def two_jobs(sc, arrays, *args, **kwargs):  # a fit is many jobs; stop() comes between two of them
        arrays.count()
        started.set()
        assert cancelled.wait(60)
        try:
            arrays.map(lambda t: t).count()
            outcome.append("ran")
        except Exception:
            outcome.append("cancelled")
            raise

    monkeypatch.setattr(engine, "cancel", cancel)
    monkeypatch.setattr(training, "fit_rating_model", two_jobs)
    trainer = Trainer(engine, RetrainPolicy(None, None, 0), poll=0.05)
    engine.store.request_retrain()
    thread = _run(trainer)
    assert started.wait(60)
    trainer.stop()
    thread.join(60)
    assert outcome == ["cancelled"] and engine.versions.current() == 1


def test_stopping_an_idle_trainer_says_one_thing(make_engine, csv_fixture, caplog):
    engine = make_engine(csv_fixture.path)
    trainer = Trainer(engine, RetrainPolicy(None, None, 0), poll=0.05)
    with caplog.at_level(logging.INFO):
        thread = _run(trainer)
        trainer.stop()
        thread.join(60)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith(("trainer", "engine"))]
    assert messages == ["trainer stopped"]


def test_a_second_trainer_on_a_folder_is_refused(tmp_path):
    first = TrainerLock(tmp_path).acquire()
    with pytest.raises(TrainerBusy, match=f"another trainer \\(pid {os.getpid()}\\) already trains in"):
        TrainerLock(tmp_path).acquire()
    first.release()
    TrainerLock(tmp_path).acquire().release()  # free again once the first one let go


@pytest.mark.slow  # several fits
def test_checkpoints_are_deleted_after_each_fit(sc, make_engine, csv_fixture):
    from spark.training import checkpoints_removed, fit_rating_model, packed

    where = Path(sc._jsc.sc().getCheckpointDir().get().removeprefix("file:"))

    def listing() -> set[Path]:
        return set(where.iterdir()) if where.exists() else set()

    # ALS checkpoints every 10 iterations: 11 make the rating model write one; the ranking model's 2 write none.
    params = ModelParams(replace(FAST.rating, rank=2, iterations=11), replace(FAST.ranking, rank=2, iterations=2))
    before = listing()
    engine = make_engine(csv_fixture.path, params=params)
    engine.store.append(7200, [(m, 4.0) for m in csv_fixture.dramas[:3]])
    assert engine.fit_and_publish() == 1
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


def test_role_tuning_and_retrain_flags_and_their_environment_fallbacks(monkeypatch):
    from settings import build_parser

    args = build_parser().parse_args(["--no-tune", "--tune-fits", "30", "--retrain-after", "5000",
                                      "--retrain-interval", "60", "--role", "api"])
    assert (args.no_tune, args.tune_fits, args.retrain_after, args.retrain_interval, args.role) == \
        (True, 30, (5000, None), 60.0, "api")
    defaults = build_parser().parse_args([])
    assert (defaults.role, defaults.retrain_after, defaults.retrain_interval) == ("all", (None, 0.01), 900.0)
    monkeypatch.setenv("RECOMMENDER_NO_TUNE", "1")
    monkeypatch.setenv("RECOMMENDER_TUNE_FITS", "45")
    monkeypatch.setenv("RECOMMENDER_TUNE_TIME_CAP", "600")
    monkeypatch.setenv("RECOMMENDER_RETRAIN_AFTER", "2.5%")
    monkeypatch.setenv("RECOMMENDER_ROLE", "trainer")
    args = build_parser().parse_args([])
    assert (args.no_tune, args.tune_fits, args.tune_time_cap, args.retrain_after, args.role) == \
        (True, 45, 600.0, (None, 0.025), "trainer")
    monkeypatch.setenv("RECOMMENDER_NO_TUNE", "off")
    monkeypatch.setenv("RECOMMENDER_RETRAIN_AFTER", "0")
    args = build_parser().parse_args([])
    assert args.no_tune is False and args.retrain_after == (None, None)


@pytest.mark.parametrize("variable,value,message", [
    ("RECOMMENDER_ROLE", "both", "RECOMMENDER_ROLE='both': choose from all, trainer, api"),
    ("RECOMMENDER_PORT", "http", "RECOMMENDER_PORT='http': expected a whole number"),
    ("RECOMMENDER_THREADS", "0", "RECOMMENDER_THREADS='0': expected a whole number from 1"),
    ("RECOMMENDER_HEAP", "lots", "RECOMMENDER_HEAP='lots': expected a size such as 512m"),
    ("RECOMMENDER_SCALE", "1-5", "RECOMMENDER_SCALE='1-5': expected LOW,HIGH,STEP"),
    ("RECOMMENDER_TUNE_FITS", "0", "RECOMMENDER_TUNE_FITS='0': expected a whole number from 1"),
    ("RECOMMENDER_TUNE_TIME_CAP", "-5", "RECOMMENDER_TUNE_TIME_CAP='-5': expected a number of seconds"),
    ("RECOMMENDER_NO_TUNE", "maybe", "RECOMMENDER_NO_TUNE='maybe': expected 1 or 0"),
    ("RECOMMENDER_RETRAIN_AFTER", "lots", "RECOMMENDER_RETRAIN_AFTER='lots': expected a number of ratings"),
    ("RECOMMENDER_RETRAIN_AFTER", "150%", "RECOMMENDER_RETRAIN_AFTER='150%': expected a number of ratings"),
    ("RECOMMENDER_RETRAIN_INTERVAL", "soon", "RECOMMENDER_RETRAIN_INTERVAL='soon': expected a number of seconds"),
    ("RECOMMENDER_KEEP_VERSIONS", "0", "RECOMMENDER_KEEP_VERSIONS='0': expected a whole number from 1"),
])
def test_bad_environment_settings_are_one_line_errors(monkeypatch, capsys, variable, value, message):
    from settings import build_parser

    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_bad_environment_setting_stops_the_server_before_spark(tmp_path):
    out = subprocess.run([sys.executable, "server.py", "--model-dir", str(tmp_path)], cwd=ROOT,
                         env={**os.environ, "RECOMMENDER_ROLE": "bogus"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "RECOMMENDER_ROLE='bogus'" in out.stderr
    assert "Spark" not in out.stdout + out.stderr


def test_a_cluster_master_without_a_shared_checkpoint_dir_is_refused_before_spark(csv_fixture, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SPARK_CHECKPOINT_DIR"}
    out = subprocess.run([sys.executable, "server.py", "--role", "trainer", "--master", "spark://127.0.0.1:9",
                          "--dataset", str(csv_fixture.path), "--model-dir", str(tmp_path / "m")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "ALS checkpoints must go where every executor can reach them: give --checkpoint-dir" in out.stderr
    assert "Spark" not in out.stdout  # refused before the JVM started


def test_api_token_from_a_file(tmp_path):
    from settings import build_parser, read_token

    (tmp_path / "token").write_text("s3cret\n")
    assert read_token(build_parser().parse_args(["--api-token-file", str(tmp_path / "token")])) == "s3cret"
    (tmp_path / "empty").write_text("\n")
    for argv, message in ((["--api-token-file", str(tmp_path / "empty")], "must hold one token"),
                          (["--api-token-file", str(tmp_path / "none")], "cannot read"),
                          (["--api-token", "x", "--api-token-file", str(tmp_path / "token")], "not both")):
        with pytest.raises(ValueError, match=message):
            read_token(build_parser().parse_args(argv))


def test_the_app_is_never_in_debug_mode_even_when_flask_debug_is_set(monkeypatch, make_recommender):
    from app import create_app

    monkeypatch.setenv("FLASK_DEBUG", "1")  # Flask would turn its debugger on from this
    app = create_app(make_recommender())
    assert app.debug is False
    response = app.test_client().get("/1/ratings/top/x")
    assert response.status_code == 400 and json.loads(response.data) == {
        "error": "count must be a whole number from 1 to 1000, not 'x'"}


def test_a_trainer_that_lost_the_stores_lock_stops(make_engine, csv_fixture, caplog):
    """Another trainer took the database store's lock (dropped by a database restart): this one stops at its
    next heartbeat rather than publish beside it."""
    from trainer.loop import RetrainPolicy, Trainer

    class Lost:
        def held(self) -> bool:
            return False

    engine = make_engine(csv_fixture.path)
    trainer = Trainer(engine, RetrainPolicy(None, None, 0), heartbeat=0.05, lock=Lost())
    with caplog.at_level("ERROR"):
        trainer.run()  # returns once the heartbeat finds the lock gone
    assert "another trainer took the store's trainer lock" in caplog.text
    status = engine.store.trainer_status()
    assert status["state"] == "stopped" and status["error"] == "another trainer took the store"
