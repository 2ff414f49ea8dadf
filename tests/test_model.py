"""The trained model: fallback predictions, clipping, fold-in, and saving/loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FAST

from datasets import movielens
from model import FactorModel, ModelError, Scale
from training import train


@pytest.fixture(scope="module")
def trained(sc, csv_fixture):
    ratings, _ = movielens.load_ratings(sc, movielens.detect_layout(sc, str(csv_fixture.path)))
    return train(sc, ratings, FAST, Scale(0.5, 5.0, 0.5))


def test_every_pair_gets_a_prediction_on_the_scale(trained):
    users = np.array([1, 2, 999_999, 1, 999_999])
    movies = np.array([1, 40, 1, 123_456, 123_456])
    pred = trained.predict_pairs(users, movies)
    assert np.all(np.isfinite(pred)) and np.all((pred >= 0.5) & (pred <= 5.0))
    mrow, urow = trained.movie_row(1), trained.user_row(1)
    # Unseen user: global mean plus the movie's bias; unseen movie: plus the user's bias; both: the mean.
    assert pred[2] == pytest.approx(trained.mu + trained.movie_bias[mrow])
    assert pred[3] == pytest.approx(trained.mu + trained.user_bias[urow])
    assert pred[4] == pytest.approx(trained.mu)


def test_model_learns_the_planted_tastes(trained, csv_fixture):
    comedy, drama = csv_fixture.comedies, csv_fixture.dramas
    for user, group in list(csv_fixture.groups.items())[:10]:
        liked, disliked = (comedy, drama) if group == 0 else (drama, comedy)
        p_like = trained.predict_pairs(np.full(len(liked), user), np.array(liked)).mean()
        p_dislike = trained.predict_pairs(np.full(len(disliked), user), np.array(disliked)).mean()
        assert p_like > p_dislike + 1.5


def test_fold_in_matches_the_trained_user_closely(trained, csv_fixture):
    user = 3
    mine = [(m, r) for u, m, r in csv_fixture.ratings if u == user]
    movies = np.array([m for m, _ in mine])
    bias, vector = trained.fold_in(trained.movie_rows(movies), np.array([r for _, r in mine]))
    row = trained.user_row(user)
    base = trained.mu + trained.movie_bias
    trained_pred = base + trained.user_bias[row] + trained.movie_factors @ trained.user_factors[row]
    folded_pred = base + bias + trained.movie_factors @ vector
    assert np.sqrt(np.mean((trained_pred - folded_pred) ** 2)) < 0.15


def test_save_load_round_trip_gives_identical_predictions(trained, tmp_path):
    trained.save(tmp_path, {"dataset_fingerprint": "abc"})
    loaded = FactorModel.load(tmp_path)
    users = np.repeat(np.arange(0, 70), 45)
    movies = np.tile(np.arange(0, 45), 70)
    assert np.array_equal(loaded.predict_pairs(users, movies), trained.predict_pairs(users, movies))
    assert loaded.params == trained.params and loaded.scale == trained.scale
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["dataset_fingerprint"] == "abc" and "created_at" in meta and meta["params"]["rank"] == FAST.rank


def test_damaged_arrays_are_refused(trained, tmp_path):
    trained.save(tmp_path, {})
    arrays = next(tmp_path.glob("model-*.npz"))
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        FactorModel.load(tmp_path)


def test_garbage_metadata_is_refused(tmp_path):
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="damaged"):
        FactorModel.load(tmp_path)


def test_scale_inference_and_checks():
    assert Scale.infer(np.array([1.0, 3.0, 5.0])) == Scale(1.0, 5.0, 1.0)
    half = Scale.infer(np.array([0.5, 3.5, 5.0]))
    assert half == Scale(0.5, 5.0, 0.5)
    assert half.allows(4.5) and not half.allows(4.25) and not half.allows(5.5) and not half.allows(float("nan"))
