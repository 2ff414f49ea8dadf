"""The serving rules on small NumPy models: the one top-k rule, spreads, and the blended order."""

from __future__ import annotations

import numpy as np
import pytest

from model import Models, RankingModel, RankingParams, RatingModel, RatingParams, Scale
from serving.snapshot import Moments, Snapshot, candidates, top_k


def test_top_k_is_exact_and_breaks_ties_by_row():
    scores = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.5])
    candidates = np.arange(7)
    assert top_k(scores, candidates, 3).tolist() == [1, 3, 2]  # the tie at 2.0 straddles the cut: lowest row
    assert top_k(scores, candidates, 5).tolist() == [1, 3, 2, 4, 5]
    assert top_k(scores, np.array([0, 4, 6]), 10).tolist() == [4, 0, 6]
    assert top_k(scores, candidates, 0).tolist() == []
    assert top_k(scores, candidates[:0], 3).tolist() == []


def test_moments_give_the_spread_of_any_product():
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(500, 6)) + rng.normal(size=6)
    moments = Moments.of(matrix)
    for _ in range(5):
        w = rng.normal(size=6)
        assert moments.spread(w) == pytest.approx(np.std(matrix @ w), rel=1e-9)
    assert Moments.of(np.ones((4, 2))).spread(np.array([1.0, -1.0])) == 1.0  # constant: no division by zero


@pytest.fixture
def snapshot():
    rng = np.random.default_rng(5)
    users, movies = np.arange(1, 21), np.arange(100, 160)
    rating = RatingModel(mu=3.5, user_ids=users, user_bias=rng.normal(0, 0.3, 20),
                         user_factors=rng.normal(0, 0.5, (20, 4)), movie_ids=movies,
                         movie_bias=rng.normal(0, 0.5, 60), movie_factors=rng.normal(0, 0.5, (60, 4)),
                         params=RatingParams(rank=4), scale=Scale(0.5, 5.0, 0.5))
    ranking = RankingModel(user_ids=users, user_factors=rng.normal(0, 1, (20, 8)), movie_ids=movies,
                           movie_factors=rng.normal(0, 1, (60, 8)), params=RankingParams(rank=8, blend=0.7))
    catalogue = np.arange(95, 165)  # a few movies neither model has seen, on both sides
    return Snapshot.build(Models(rating, ranking), catalogue)


def test_lists_follow_the_blended_standardised_scores(snapshot):
    """The served order is z(ranking score) + blend * z(unclipped prediction) over the catalogue."""
    candidates = np.arange(len(snapshot.movie_ids))
    for user in (1, 7, 20):
        vectors = snapshot.user_vectors(user)
        rank = snapshot.rank_factors.astype(np.float64) @ vectors.ranking
        predicted = snapshot.predicted_ratings(vectors, clip=False)
        expected = (rank - rank.mean()) / rank.std() + 0.7 * (predicted - predicted.mean()) / predicted.std()
        rows, scores = snapshot.top_n(vectors, candidates, 15, popularity=np.zeros(len(candidates)))
        assert rows.tolist() == np.argsort(-expected, kind="stable")[:15].tolist()
        assert np.all(np.diff(scores) < 0)


def test_a_stranger_gets_the_most_popular_candidates(snapshot):
    popularity = np.arange(len(snapshot.movie_ids))[::-1].astype(float)
    rows, scores = snapshot.top_n(snapshot.user_vectors(999), np.arange(10, 30), 3, popularity)
    assert rows.tolist() == [10, 11, 12] and scores.tolist() == popularity[[10, 11, 12]].tolist()


def test_candidates_apply_min_count_exclusions_and_a_filter():
    counts = np.array([30, 5, 25, 40, 26, 0])
    assert candidates(counts, 25).tolist() == [0, 2, 3, 4]
    assert candidates(counts, 25, rated_rows=np.array([0, 4])).tolist() == [2, 3]
    genre = np.array([True, True, False, True, True, True])
    assert candidates(counts, 25, np.array([3]), genre).tolist() == [0, 4]
    assert candidates(counts, 0, np.array([], dtype=np.int64)).tolist() == [0, 1, 2, 3, 4, 5]


def test_top_k_on_long_lists_is_the_exact_selection():
    """Long lists take a sampled lower bound first; the answer must be what a full sort gives, ties included."""
    rng = np.random.default_rng(11)
    for n, k in ((50_000, 10), (5_000, 10), (20_000, 1), (3_000, 25)):
        scores = np.round(rng.normal(size=n), 2)  # rounding makes ties, also at the cut
        rows = np.flatnonzero(rng.random(n) < 0.8)
        expected = rows[np.lexsort((rows, -scores[rows]))][:k]
        assert top_k(scores, rows, k).tolist() == expected.tolist()
    skewed = np.zeros(40_000)
    skewed[::997] = 1.0  # the evenly spaced sample sees almost only zeros
    assert top_k(skewed, np.arange(40_000), 10).tolist() == np.flatnonzero(skewed)[:10].tolist()
