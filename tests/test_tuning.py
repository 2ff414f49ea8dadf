"""Tuning: the blend's weights, the coordinate search and its budget, and tuning on first training."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from conftest import FAST
from fixtures import write_ratings_csv

import evaluate
from engine import RecommendationEngine
from model import Ingredients, ModelParams, NeighbourParams, RatingParams, Scale, TuneBudget
from spark import tuning
from storage.params import save_params, saved_params
from storage.versions import ModelVersions


def test_blend_weights_are_least_squares_judged_out_of_sample():
    """Weights fitted on one half of the validation pairs score the other half (both ways); the support
    with the lowest such RMSE wins, and the weights kept are least squares on all the pairs."""
    rng = np.random.default_rng(3)
    n = 4000
    baseline = rng.uniform(2.5, 3.5, n)
    dots = rng.normal(0, 0.5, n)
    sx, ss = rng.normal(0, 1, n), rng.uniform(0, 3, n)
    actual = baseline + 0.1 + 0.7 * dots + 1.2 * sx / (ss + 1.0) + rng.normal(0, 0.05, n)
    parts = Ingredients(baseline, dots, np.ones(n, dtype=bool), sx, ss)
    folds = (np.arange(n) % 2).astype(np.int8)
    scale = Scale(-10, 10, 0.5)
    pick, table = tuning.fit_blend(actual, parts, scale, NeighbourParams(), folds, supports=(0.5, 1.0, 2.0))
    assert [row["support"] for row in table] == [0.5, 1.0, 2.0]
    assert pick.support == 1.0
    assert (pick.intercept, pick.als_weight, pick.knn_weight) == pytest.approx((0.1, 0.7, 1.2), abs=0.01)
    # valid_rmse is the out-of-sample figure, computed here by hand for the pick.
    features = np.column_stack([np.ones(n), dots, sx / (ss + 1.0)])
    held_out = np.zeros(n)
    for fold in (0, 1):
        w = np.linalg.lstsq(features[folds == fold], (actual - baseline)[folds == fold], rcond=None)[0]
        held_out[folds != fold] = features[folds != fold] @ w
    by_hand = np.sqrt(np.mean((scale.clip(baseline + held_out) - actual) ** 2))
    row = table[1]
    assert row["valid_rmse"] == pytest.approx(by_hand, abs=1e-5)
    assert row["in_sample_rmse"] < row["valid_rmse"]  # fitted on the pairs it is judged on, it flatters itself


def test_the_validation_split_and_folds_depend_on_the_pairs_and_the_seed_only():
    users, movies = np.arange(20000) % 97, np.arange(20000) // 97
    units = tuning.pair_unit(users, movies, 42)
    assert ((units >= 0) & (units < 1)).all() and abs((units < 0.1).mean() - 0.1) < 0.01
    order = np.random.default_rng(0).permutation(len(users))  # another order (partitioning): the same units
    assert np.array_equal(tuning.pair_unit(users[order], movies[order], 42), units[order])
    assert not np.array_equal(tuning.pair_unit(users, movies, 43), units)


class Bowl(tuning.Search):
    """The search with a known validation RMSE surface (lowest at lambda 0.05, rank 32) instead of fits."""

    def score(self, params: RatingParams) -> float:
        if params not in self.scores:
            self.scores[params] = (np.log(params.reg / 0.05)) ** 2 + (np.log2(params.rank / 32)) ** 2 \
                + 0.01 * params.movie_damping + 0.001 * params.iterations
        return self.scores[params]


def test_the_search_walks_downhill_to_the_best_steps_and_scores_each_candidate_once():
    search = Bowl(fits=100, deadline=math.inf)
    best = search.run(RatingParams())
    assert (best.reg, best.rank, best.movie_damping, best.iterations) == (0.05, 32, 0.0, 5)
    assert len(search.scores) < 40 and not search.capped


def test_the_search_makes_as_many_fits_as_its_budget_and_the_time_cap_is_reported():
    by_fits = Bowl(fits=5, deadline=math.inf)
    by_fits.run(RatingParams())
    assert len(by_fits.scores) == 5 and not by_fits.capped
    by_time = Bowl(fits=100, deadline=time.perf_counter())
    assert by_time.run(RatingParams()) == RatingParams()
    assert len(by_time.scores) == 1 and by_time.capped  # the starting point is always scored


@pytest.mark.slow  # tunes and trains
def test_a_new_dataset_is_served_with_the_defaults_first_then_tuned_and_served_again(sc, csv_fixture, tmp_path,
                                                                                     caplog, monkeypatch):
    """No params.json: the trainer publishes a fit with the defaults at once (so API processes can answer),
    then tunes, saves the pick and publishes the tuned fit as the next version; a restart reuses both."""
    from trainer.loop import RetrainPolicy, Trainer

    model_dir = tmp_path / "model"
    base = ModelParams()
    caplog.set_level(logging.INFO)
    fits = []
    real_fit = tuning.fit_rating_model
    monkeypatch.setattr(tuning, "fit_rating_model", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    engine = RecommendationEngine(sc, str(csv_fixture.path), model_dir, tune_budget=TuneBudget(fits=1))
    published, second = [], threading.Event()
    real_publish = engine.fit_and_publish

    def publish():
        published.append((real_publish(), engine.params))
        if len(published) == 2:
            second.set()
        return published[-1][0]

    monkeypatch.setattr(engine, "fit_and_publish", publish)
    trainer = Trainer(engine, RetrainPolicy(None, None, 0), poll=0.05)
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    try:
        assert second.wait(300)
    finally:
        trainer.stop()
        thread.join(60)
        engine.close()
    picked = saved_params(model_dir)
    report = json.loads((model_dir / "tune.json").read_text())
    assert [(number, params) for number, params in published] == [(1, base), (2, picked)]
    assert ModelVersions(model_dir).load(2)[0].models.params == picked
    assert report["chosen"] == picked.as_dict() and len(report["table"]) == report["fits"] == 1
    assert not report["time_cap_hit"]
    first = report["table"][0]
    assert (first["rank"], first["reg"]) == (base.rating.rank, base.rating.reg)
    best = min(report["table"], key=lambda row: row["valid_rmse"])
    assert (picked.rating.rank, picked.rating.reg) == (best["rank"], best["reg"])
    assert len(fits) == len(report["table"])  # each candidate fitted once; the pick is not fitted again
    # Picked by the served blend's out-of-sample error, and the blend beats ALS alone on the validation pairs.
    assert best["valid_rmse"] == report["served_valid_rmse"] == min(row["valid_rmse"] for row in report["blend_table"])
    assert picked.neighbours != base.neighbours and report["valid_rmse"]["blend"] < report["valid_rmse"]["als"]
    assert any(r.message.startswith("tuned in") for r in caplog.records)
    # The same ratings partitioned otherwise, on a machine with another number of cores: the same trials, the
    # same pick (a split by randomSplit, or ALS blocks per core, each gives other figures here).
    monkeypatch.setattr(type(sc), "defaultParallelism", property(lambda self: 3))
    elsewhere, again_report = tuning.tune(sc, sc.parallelize(csv_fixture.ratings, 5), base, engine.scale,
                                          TuneBudget(fits=1))
    assert elsewhere == picked
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in again_report["table"]] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in report["table"]]
    again = RecommendationEngine(sc, str(csv_fixture.path), model_dir, tune_budget=TuneBudget(fits=1))
    try:
        assert again.params == picked and again.tune_budget is None
        assert Trainer(again, RetrainPolicy(None, None, 0))._due() is None  # nothing to fit or tune
    finally:
        again.close()


@pytest.mark.slow  # tunes and trains
def test_evaluate_tunes_on_the_training_part_only(sc, csv_fixture, tmp_path, monkeypatch, capsys):
    train = [r for i, r in enumerate(csv_fixture.ratings) if i % 5]
    test = [r for i, r in enumerate(csv_fixture.ratings) if not i % 5]
    write_ratings_csv(tmp_path / "train.csv", train)
    write_ratings_csv(tmp_path / "test.csv", test)
    seen = []
    real_tune = tuning.tune

    def spy(sc, ratings, base, *args, **kwargs):
        seen.append({(u, m) for u, m, _ in ratings.collect()})
        return real_tune(sc, ratings, ModelParams(replace(FAST.rating, iterations=5), FAST.ranking), *args,
                         **kwargs)

    monkeypatch.setattr(tuning, "tune", spy)
    status = evaluate.main(["--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
                            "--tune-fits", "1", "--min-count", "0", "--json"], sc=sc)
    out = capsys.readouterr().out.strip().splitlines()
    assert status == 0
    assert seen == [{(u, m) for u, m, _ in train}]
    result = json.loads(out[-1])
    assert result["tuned"]["fits"] == 1 and result["tuned"]["n_valid"] > 0
    # The comparison table precedes the JSON, one line per part, and matches it.
    assert out[-6].split() == ["model", "rmse", "mae", "coverage"]
    assert [line.split()[0] for line in out[-5:-1]] == list(evaluate.PARTS) == list(result["models"])
    assert float(out[-2].split()[1]) == result["rmse"] == result["models"]["blend"]["rmse"]
    assert result["models"]["blend"]["rmse"] < result["models"]["baseline"]["rmse"]


def test_a_tuning_report_alone_leaves_the_dataset_untuned(tmp_path):
    """``evaluate.py --tune`` without ``--save`` keeps its report but must not write params.json: that
    file's absence is what makes the service tune on its first training."""
    save_params(tmp_path, None, {"table": []})
    assert json.loads((tmp_path / "tune.json").read_text()) == {"table": []}
    assert saved_params(tmp_path) is None
    picked = ModelParams(replace(FAST.rating, reg=0.3))
    save_params(tmp_path, picked)
    assert saved_params(tmp_path) == picked and not list(tmp_path.glob("*.tmp"))
