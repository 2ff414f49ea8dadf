"""Tuning: the blend's weights, the coordinate search and its budget, and tuning on first training."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from conftest import FAST
from fixtures import write_ratings_csv

import evaluate
from engine import RecommendationEngine
from model import Ingredients, ModelParams, NeighbourParams, RatingParams, Scale
from spark import tuning
from storage.params import save_params, saved_params
from storage.versions import ModelVersions


def test_blend_weights_are_least_squares_on_the_validation_pairs():
    rng = np.random.default_rng(3)
    n = 4000
    baseline = rng.uniform(2.5, 3.5, n)
    dots = rng.normal(0, 0.5, n)
    sx, ss = rng.normal(0, 1, n), rng.uniform(0, 3, n)
    actual = baseline + 0.1 + 0.7 * dots + 1.2 * sx / (ss + 1.0) + rng.normal(0, 0.05, n)
    parts = Ingredients(baseline, dots, np.ones(n, dtype=bool), sx, ss)
    pick, table = tuning.fit_blend(actual, parts, Scale(-10, 10, 0.5), NeighbourParams(), supports=(0.5, 1.0, 2.0))
    assert [row["support"] for row in table] == [0.5, 1.0, 2.0]
    assert pick.support == 1.0
    assert (pick.intercept, pick.als_weight, pick.knn_weight) == pytest.approx((0.1, 0.7, 1.2), abs=0.01)
    assert min(row["valid_rmse"] for row in table) == pytest.approx(0.05, abs=0.005)


class Bowl(tuning.Search):
    """The search with a known validation RMSE surface (lowest at lambda 0.05, rank 32) instead of fits."""

    def score(self, params: RatingParams) -> float:
        if params not in self.scores:
            self.scores[params] = (np.log(params.reg / 0.05)) ** 2 + (np.log2(params.rank / 32)) ** 2 \
                + 0.01 * params.movie_damping + 0.001 * params.iterations
            self.table.append({"rank": params.rank, "reg": params.reg})
        return self.scores[params]


def test_the_search_walks_downhill_to_the_best_steps_and_scores_each_candidate_once():
    search = Bowl(None, None, None, None, deadline=time.perf_counter() + 60)
    best = search.run(RatingParams())
    assert (best.reg, best.rank, best.movie_damping, best.iterations) == (0.05, 32, 0.0, 5)
    assert len(search.table) == len(search.scores) < 40


def test_the_search_starts_no_fit_after_the_budget():
    search = Bowl(None, None, None, None, deadline=time.perf_counter())
    assert search.run(RatingParams()) == RatingParams()
    assert len(search.table) == 1  # the starting point is always scored


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
    engine = RecommendationEngine(sc, str(csv_fixture.path), model_dir, tune_budget=8)
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
    assert report["chosen"] == picked.as_dict() and len(report["table"]) >= 1
    first = report["table"][0]
    assert (first["rank"], first["reg"]) == (base.rating.rank, base.rating.reg)
    best = min(report["table"], key=lambda row: row["valid_rmse"])
    assert (picked.rating.rank, picked.rating.reg) == (best["rank"], best["reg"])
    assert len(fits) == len(report["table"])  # each candidate fitted once; the pick is not fitted again
    # The blend's weights were fitted, and the blend beats ALS alone on the validation pairs.
    assert picked.neighbours != base.neighbours and report["valid_rmse"]["blend"] < report["valid_rmse"]["als"]
    assert any(r.message.startswith("tuned in") for r in caplog.records)
    again = RecommendationEngine(sc, str(csv_fixture.path), model_dir, tune_budget=8)
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
                            "--tune-budget", "0", "--min-count", "0", "--json"], sc=sc)
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
