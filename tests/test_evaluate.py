"""Offline evaluation: every test pair predicted, the JSON contract, tuning, and the real-data target."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from conftest import FAST, ROOT
from fixtures import write_ratings_csv

import evaluate
from datasets import movielens

FIELDS = {"rmse", "mae", "coverage", "baseline_rmse", "n_train", "n_test", "fit_seconds", "params",
          "precision_at_10", "ndcg_at_10"}


def test_cli_on_split_files_prints_the_json_contract(csv_fixture, tmp_path):
    ratings = csv_fixture.ratings
    train = [r for i, r in enumerate(ratings) if i % 5]
    test = [r for i, r in enumerate(ratings) if not i % 5]
    test += [(9999, 1, 4.0), (1, 77_777, 3.0)]  # a user and a movie the model never saw
    write_ratings_csv(tmp_path / "train.csv", train)
    write_ratings_csv(tmp_path / "test.csv", test)
    out = subprocess.run(
        [sys.executable, "evaluate.py", "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
         "--rank", "4", "--iterations", "8", "--master", "local[2]", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert FIELDS <= set(result)
    assert result["coverage"] == 1.0
    assert (result["n_train"], result["n_test"]) == (len(train), len(test))
    assert result["params"]["rank"] == 4 and result["params"]["iterations"] == 8
    assert 0 < result["rmse"] < result["baseline_rmse"]  # the planted tastes are beyond biases
    assert 0 < result["precision_at_10"] <= 1 and 0 < result["ndcg_at_10"] <= 1


@pytest.mark.parametrize("args,message", [
    ([], "either --dataset"),
    (["--dataset", "x", "--train", "y"], "either --dataset"),
    (["--dataset", "x", "--test-fraction", "1.5"], "--test-fraction"),
])
def test_cli_argument_errors_are_one_line(capsys, args, message):
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_cli_missing_dataset_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "evaluate.py", "--dataset", str(tmp_path / "none"), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("evaluate.py: no MovieLens dataset")


def test_tune_reports_every_candidate_and_picks_the_best(sc, csv_fixture):
    ratings, _ = movielens.load_ratings(sc, movielens.detect_layout(sc, str(csv_fixture.path)))
    printed = io.StringIO()
    result = evaluate.tune(sc, ratings, FAST, seed=1, ranks=(2, 4), regs=(0.05, 0.5), out=printed)
    assert [(row["rank"], row["reg"]) for row in result["table"]] == [(2, 0.05), (2, 0.5), (4, 0.05), (4, 0.5)]
    best = min(result["table"], key=lambda row: row["valid_rmse"])
    assert (result["chosen"]["rank"], result["chosen"]["reg"]) == (best["rank"], best["reg"])
    assert result["test"]["coverage"] == 1.0
    assert len(printed.getvalue().splitlines()) == 5


def test_default_model_beats_the_target_on_ml_latest_small(sc, real_dataset):
    """The acceptance figure: rmse <= 0.855 with full coverage (plain tutorial ALS: 0.891)."""
    from model import TrainParams

    ratings, bad = movielens.load_ratings(sc, movielens.detect_layout(sc, str(real_dataset)))
    train, test = ratings.randomSplit([0.8, 0.2], seed=42)
    result = evaluate.evaluate(sc, train, test, TrainParams())
    assert bad.value == 0
    assert result["coverage"] == 1.0
    assert result["n_train"] + result["n_test"] == 100_836
    assert result["rmse"] <= 0.855
    assert result["rmse"] < result["baseline_rmse"]
