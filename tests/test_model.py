"""The trained models: fallback predictions, clipping, both fold-ins, and saving/loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FAST

from datasets import movielens
from model import ModelError, ModelParams, RankingModel, RankingParams, Scale, neighbour_sums
from spark.training import fit_models
from storage.catalogue import Catalogue, Histories
from storage.versions import ModelVersions


@pytest.fixture(scope="module")
def models(sc, csv_fixture):
    from spark import training

    ratings, _ = movielens.load_ratings(sc, movielens.detect_layout(sc, str(csv_fixture.path)))
    cells, training.REDUCE_CELLS = training.REDUCE_CELLS, 100  # the neighbourhood's sums in several blocks
    try:
        return fit_models(sc, ratings, FAST, Scale(0.5, 5.0, 0.5))
    finally:
        training.REDUCE_CELLS = cells


@pytest.fixture(scope="module")
def trained(models):
    return models.rating


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


def test_ranking_fold_in_reproduces_the_trained_user(models, csv_fixture):
    """mllib updates users last, so the closed-form user solve must give back each trained user vector."""
    ranking = models.ranking
    for user in (3, 4, 17):
        mine = [(m, r) for u, m, r in csv_fixture.ratings if u == user]
        rows = ranking.movie_rows(np.array([m for m, _ in mine]))
        folded = ranking.fold_in(rows, np.array([r for _, r in mine]))
        trained = ranking.user_factors[ranking.user_row(user)]
        assert np.allclose(folded, trained, atol=2e-3 * np.abs(trained).max())


def test_a_few_ratings_fold_in_through_the_low_rank_solve_to_the_same_vector():
    """The Woodbury path (fewer rated movies than half the rank) and the direct solve of the implicit-ALS
    normal equations give one vector; a dislike, a neutral rating and an unknown movie count as they should."""
    rng = np.random.default_rng(7)
    params = RankingParams(rank=8)
    Y = rng.normal(0, 0.5, (20, params.rank))
    model = RankingModel(np.arange(3), rng.normal(size=(3, params.rank)), np.arange(20), Y, params)

    def direct(rows, ratings):  # the normal equations as the docstring writes them, solved whole
        values = params.preferences(np.asarray(ratings, dtype=float))
        c = 1.0 + params.alpha * np.abs(values)
        p = (values > 0).astype(float)
        A = Y.T @ Y + Y[rows].T @ np.diag(c - 1.0) @ Y[rows] + params.reg * p.sum() * np.eye(params.rank)
        return np.linalg.solve(A, Y[rows].T @ (c * p))

    for rows, ratings in (([0, 5, 6, 7, 8, 11], [4.0, 1.0, 5.0, 3.0, 2.0, 4.5]),  # six: the direct solve
                          ([4], [4.5]), ([4, 9], [5.0, 1.0]), ([1, 2, 3], [4.0, 2.5, 3.5])):
        model._eigen = None  # made by the low-rank path only: whether this case took it
        assert np.allclose(model.fold_in(np.array(rows), np.array(ratings)), direct(rows, ratings), rtol=1e-10)
        assert (model._eigen is None) == (len(rows) == 6)
    # By hand, one rating of 4.5 (value 2, confidence 1 + 2 alpha): (G + reg I + c1 y y^T) x = (1 + c1) y.
    y, c1 = Y[4], 2 * params.alpha
    by_hand = np.linalg.solve(Y.T @ Y + params.reg * np.eye(8) + c1 * np.outer(y, y), (1 + c1) * y)
    assert np.allclose(model.fold_in(np.array([4, -1]), np.array([4.5, 3.0])), by_hand, rtol=1e-10)


def test_signed_confidence_makes_low_ratings_dislikes(models, csv_fixture):
    ranking = models.ranking
    params = ranking.params
    assert params.confidence == "signed"
    assert list(params.preferences(np.array([4.5, 2.5, 1.0]))) == [2.0, 0.0, -1.5]
    assert RankingParams(confidence="binary").preferences(np.array([4.5, 1.0])).tolist() == [1.0, 1.0]
    by_user = RankingParams(centre="user")  # the user's mean as the boundary (measured: ranks worse than 2.5)
    assert by_user.preferences(np.array([4.5, 2.5]), np.array([3.0, 3.0])).tolist() == [1.5, -0.5]
    with pytest.raises(ModelError):
        RankingParams(centre="median")
    # Loving comedies and hating dramas ranks the unrated comedies first, though both were "watched".
    rows = ranking.movie_rows(np.array(csv_fixture.comedies[:5] + csv_fixture.dramas[:5]))
    vector = ranking.fold_in(rows, np.array([5.0] * 5 + [0.5] * 5))
    scores = ranking.movie_factors @ vector
    unrated = ranking.movie_rows(np.array(csv_fixture.comedies[5:] + csv_fixture.dramas[5:]))
    top = ranking.movie_ids[unrated[np.argsort(-scores[unrated])[:10]]]
    assert set(top.tolist()) <= set(csv_fixture.comedies)


def _publish(models, model_dir, meta=None):
    ids = models.rating.movie_ids
    catalogue = Catalogue(ids, [f"Movie {m}" for m in ids.tolist()], [()] * len(ids))
    histories = Histories.build(np.array([1, 1, 2]), np.array([0, 1, 0]), np.array([4.0, 3.5, 2.0]), len(ids))
    return ModelVersions(model_dir).publish(models, catalogue, histories, meta or {"seq": 0})


def test_a_published_version_loads_as_identical_models(models, tmp_path):
    number = _publish(models, tmp_path, {"dataset_fingerprint": "abc", "seq": 0})
    version, lease = ModelVersions(tmp_path).load()
    lease.release()
    loaded = version.models
    assert number == version.number == 1
    users = np.repeat(np.arange(0, 70), 45)
    movies = np.tile(np.arange(0, 45), 70)
    assert np.array_equal(loaded.rating.predict_pairs(users, movies), models.rating.predict_pairs(users, movies))
    assert np.array_equal(loaded.ranking.movie_factors, models.ranking.movie_factors)
    assert np.array_equal(loaded.ranking.user_factors, models.ranking.user_factors)
    assert models.neighbours.active and models.neighbours.neighbours.shape == (len(models.rating.movie_ids), 39)
    assert np.array_equal(loaded.neighbours.neighbours, models.neighbours.neighbours)
    assert np.array_equal(loaded.neighbours.similarity, models.neighbours.similarity)
    assert loaded.params == models.params == FAST and loaded.scale == models.scale
    meta = json.loads((tmp_path / "versions" / "v000001" / "version.json").read_text())
    assert meta["dataset_fingerprint"] == "abc" and "created_at" in meta
    assert meta["params"] == FAST.as_dict()
    assert version.histories.of(1).ratings.tolist() == [4.0, 3.5]


def test_params_files_name_what_is_wrong():
    assert ModelParams.from_dict({"rating": {"rank": 9}}).rating.rank == 9
    assert ModelParams.from_dict({"ranking": {"alpha": 2.0}}).ranking.alpha == 2.0
    assert ModelParams.from_dict({"neighbours": {"k": 20}}).neighbours.k == 20
    with pytest.raises(ModelError, match="neighbours: unknown parameter.*kk"):
        ModelParams.from_dict({"neighbours": {"kk": 20}})
    legacy = ModelParams.from_dict({"rank": 16, "reg": 0.2})  # params.json as --tune --save wrote it before
    assert (legacy.rating.rank, legacy.rating.reg, legacy.ranking) == (16, 0.2, ModelParams().ranking)
    with pytest.raises(ModelError, match="unknown parameter.*rnak"):
        ModelParams.from_dict({"rating": {"rnak": 9}})
    with pytest.raises(ModelError, match="not the key.*alpha"):
        ModelParams.from_dict({"rank": 9, "alpha": 1.0})
    with pytest.raises(ModelError, match="confidence must be one of"):
        ModelParams.from_dict({"ranking": {"confidence": "loud"}})


def test_damaged_arrays_are_refused(models, tmp_path):
    _publish(models, tmp_path)
    arrays = tmp_path / "versions" / "v000001" / "model-movie_factors.npy"
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        ModelVersions(tmp_path).load()


def test_garbage_metadata_is_refused(models, tmp_path):
    _publish(models, tmp_path)
    (tmp_path / "versions" / "v000001" / "version.json").write_text("{not json")
    with pytest.raises(ModelError, match="damaged"):
        ModelVersions(tmp_path).load()


def test_scale_inference_and_checks():
    assert Scale.infer(np.array([1.0, 3.0, 5.0])) == Scale(1.0, 5.0, 1.0)
    half = Scale.infer(np.array([0.5, 3.5, 5.0]))
    assert half == Scale(0.5, 5.0, 0.5)
    assert half.allows(4.5) and not half.allows(4.25) and not half.allows(5.5) and not half.allows(float("nan"))


def test_neighbourhood_from_spark_is_the_shrunk_residual_correlation_of_common_raters(models, csv_fixture):
    """Every stored similarity equals a direct computation over the users who rated both movies
    (with 40 movies, every other movie is a candidate), and the planted taste groups come out."""
    r, nb = models.rating, models.neighbours
    users, movies, values = (np.array(c) for c in zip(*csv_fixture.ratings))
    rows = np.searchsorted(r.movie_ids, movies)
    residuals = np.full((len(r.user_ids), len(r.movie_ids)), np.nan)
    user_rows = np.searchsorted(r.user_ids, users)
    residuals[user_rows, rows] = values - r.mu - r.user_bias[user_rows] - r.movie_bias[rows]
    shrinkage = models.params.neighbours.shrinkage
    for i in range(len(r.movie_ids)):
        assert sorted(nb.neighbours[i].tolist()) == [j for j in range(len(r.movie_ids)) if j != i]
        assert np.all(np.diff(nb.similarity[i]) <= 0)  # most similar first
        for j, stored in zip(nb.neighbours[i].tolist(), nb.similarity[i].tolist()):
            both = ~np.isnan(residuals[:, i]) & ~np.isnan(residuals[:, j])
            x, y = residuals[both, i], residuals[both, j]
            n = both.sum()
            direct = x @ y / np.sqrt((x @ x) * (y @ y)) * (n - 1) / (n - 1 + shrinkage)
            assert stored == pytest.approx(direct, abs=1e-6)
        group = set(csv_fixture.comedies if r.movie_ids[i] in csv_fixture.comedies else csv_fixture.dramas)
        assert set(r.movie_ids[nb.neighbours[i, :10]].tolist()) <= group


def test_neighbour_sums_use_the_k_most_similar_positive_neighbours_the_user_rated():
    neighbours = np.array([[1, 2, 3, 4, -1], [0, 2, 3, 4, -1]], dtype=np.int32)
    similarity = np.array([[0.9, 0.8, 0.5, -0.4, 0.0], [0.7, 0.6, 0.2, 0.1, 0.0]], dtype=np.float32)
    residuals = np.array([1.0, np.nan, -2.0, 0.5, 3.0, np.nan])  # the user did not rate movie 1; padding
    sx, ss = neighbour_sums(neighbours, similarity, np.array([0, 1]), residuals, k=2)
    # movie 0: 1 unrated, so 2 and 3 (4 is dissimilar); movie 1: 0 and 2, the two most similar rated
    assert sx == pytest.approx([0.8 * -2.0 + 0.5 * 0.5, 0.7 * 1.0 + 0.6 * -2.0])
    assert ss == pytest.approx([0.8 + 0.5, 0.7 + 0.6])


