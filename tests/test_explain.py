"""serving.explain.because on hand-built arrays whose answers are worked out below, and on a real Snapshot
against a plain per-neighbour reference."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from model import (
    Models,
    NeighbourModel,
    NeighbourParams,
    RankingModel,
    RankingParams,
    RatingModel,
    RatingParams,
    Scale,
    neighbour_sums,
    user_residuals,
)
from serving.explain import because
from serving.snapshot import Snapshot, UserVectors

# Ten catalogue rows.  mu 3.0 and the user's bias 0.5 make the offset 3.5; only row 3 has a movie bias (-0.5).
# The user's ratings and residuals (rating - 3.5 - movie_bias):
#   row 1: 4.5 -> +1.0   row 2: 2.5 -> -1.0   row 3: 5.0 -> +2.0   row 4: 4.0 -> +0.5   row 5: 1.5 -> -2.0
# Their mean is 17.5 / 5 = 3.5: rows 1, 3 and 4 are at or above it.
RATED = np.array([1, 2, 3, 4, 5])
RATINGS = np.array([4.5, 2.5, 5.0, 4.0, 1.5])
USER = UserVectors(bias=0.5, factors=np.zeros(2), ranking=np.zeros(2))
N = 10
# Row 0's neighbours, most similar first (row 6 is not rated; -1 pads):
#   row:        1     2     3     6     4     5     -1
#   similarity: 0.9   0.8   0.5   0.45  0.4   -0.3  0
#   s * x:      0.9  -0.8   1.0   -     0.2   0.6 (negative similarity: neighbour_sums skips it)
# so by contribution: row 3 (1.0), row 1 (0.9), row 4 (0.2); row 2 is a dislike, row 5 not a neighbour in use.
# Row 7's neighbours are all unrated; row 8's only rated neighbour is the disliked row 2: both fall back.
# Row 6's two rated neighbours tie: 0.8 * 0.5 (row 4) = 0.4 * 1.0 (row 1).
NEIGHBOURS = {0: ([1, 2, 3, 6, 4, 5], [0.9, 0.8, 0.5, 0.45, 0.4, -0.3]), 7: ([6, 8], [0.9, 0.5]), 8: ([2], [0.7]),
              6: ([4, 1], [0.8, 0.4])}
# Ranking factors as angles in the plane (degrees); row 9 has none.  Cosines, by the angle between:
#   row 7 (0):   row 2 5 deg, row 5 10, row 4 20, row 1 40, row 3 100 (negative)
#   row 8 (45):  row 1 5, row 4 25, row 3 55 (row 2 40 and row 5 35 are below the mean)
#   row 0 (50):  row 1 10, row 4 30, row 3 50
ANGLES = {0: 50, 1: 40, 2: 5, 3: 100, 4: 20, 5: 10, 6: 170, 7: 0, 8: 45}


def stand_in(k: int = 40, blend: bool = True) -> SimpleNamespace:
    """The attributes of a Snapshot that because reads, from the tables above."""
    width = 7 if blend else 0
    neighbours = np.full((N, width), -1, dtype=np.int32)
    similarity = np.zeros((N, width), dtype=np.float32)
    if blend:
        for row, (near, sims) in NEIGHBOURS.items():
            neighbours[row, :len(near)], similarity[row, :len(sims)] = near, sims
    rank_unit = np.zeros((N, 2), dtype=np.float32)
    for row, degrees in ANGLES.items():
        rank_unit[row] = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    movie_bias = np.zeros(N)
    movie_bias[3] = -0.5
    models = SimpleNamespace(rating=SimpleNamespace(mu=3.0), blend=NeighbourParams(k=k) if blend else None)
    return SimpleNamespace(models=models, movie_ids=np.arange(100, 100 + N), movie_bias=movie_bias,
                           neighbours=neighbours, similarity=similarity, rank_unit=rank_unit,
                           has_rank=rank_unit.any(axis=1))


def test_neighbours_in_order_of_contribution_without_dislikes():
    # Row 3 before the more similar row 1 (1.0 > 0.9); row 2 (-0.8) and row 5 (negative similarity) left out.
    assert because(stand_in(), USER, RATED, RATINGS, np.array([0]), per_movie=10) == [[(3, 5.0), (1, 4.5), (4, 4.0)]]


def test_equal_contributions_in_neighbour_order():
    assert because(stand_in(), USER, RATED, RATINGS, np.array([6])) == [[(4, 4.0), (1, 4.5)]]


def test_per_movie_cuts_each_list():
    assert because(stand_in(), USER, RATED, RATINGS, np.array([0]), per_movie=2) == [[(3, 5.0), (1, 4.5)]]
    assert because(stand_in(), USER, RATED, RATINGS, np.array([0, 8]), per_movie=1) == [[(3, 5.0)], [(1, 4.5)]]
    assert because(stand_in(), USER, RATED, RATINGS, np.array([0]), per_movie=0) == [[]]


def test_only_the_k_neighbours_the_prediction_uses():
    """k counts rated neighbours of positive similarity, dislikes included, unrated ones not."""
    # k=4: rows 1, 2, 3 and 4 (row 6 is unrated and does not count).
    assert because(stand_in(k=4), USER, RATED, RATINGS, np.array([0])) == [[(3, 5.0), (1, 4.5), (4, 4.0)]]
    # k=3: rows 1, 2, 3; row 4 is past the cut.
    assert because(stand_in(k=3), USER, RATED, RATINGS, np.array([0])) == [[(3, 5.0), (1, 4.5)]]
    # k=2: rows 1 and 2 (the disliked row 2 takes a place).
    assert because(stand_in(k=2), USER, RATED, RATINGS, np.array([0])) == [[(1, 4.5)]]


def test_ranking_model_when_no_neighbour_was_rated():
    # Row 7: rows 4 then 1 by cosine; the closer rows 2 and 5 are below the user's mean, row 3's cosine negative.
    assert because(stand_in(), USER, RATED, RATINGS, np.array([7])) == [[(4, 4.0), (1, 4.5)]]


def test_ranking_model_when_no_neighbour_contributes_positively():
    # Row 8's one rated neighbour is the disliked row 2.
    assert because(stand_in(), USER, RATED, RATINGS, np.array([8])) == [[(1, 4.5), (4, 4.0), (3, 5.0)]]


def test_the_ranking_model_prefers_movies_rated_at_or_above_the_mean():
    # Rows 2 and 5 are the closest to row 7 but below the mean 3.5.
    assert because(stand_in(), USER, RATED, RATINGS, np.array([7]), per_movie=5) == [[(4, 4.0), (1, 4.5)]]
    assert because(stand_in(), USER, np.array([2, 1]), np.array([2.5, 4.5]), np.array([7])) == [[(1, 4.5)]]
    # At the mean counts: the mean of 3.0, 4.0 and 5.0 is row 4's 4.0.
    rated, ratings = np.array([2, 4, 1]), np.array([3.0, 4.0, 5.0])
    assert because(stand_in(), USER, rated, ratings, np.array([7])) == [[(4, 4.0), (1, 5.0)]]


def test_all_rated_movies_when_none_with_ranking_factors_is_above_the_mean():
    # Mean 3.0: only row 9 (5.0) is above it, and it has no ranking factors; so rows 2 and 5 serve.
    rated, ratings = np.array([2, 5, 9]), np.array([2.5, 1.5, 5.0])
    assert because(stand_in(), USER, rated, ratings, np.array([7])) == [[(2, 2.5), (5, 1.5)]]


def test_a_stranger_or_no_neighbourhood_gets_the_ranking_model():
    # Row 0 by cosine: rows 1, 4, 3 (10, 30 and 50 degrees), not the neighbourhood's 3, 1, 4.
    expected = [[(1, 4.5), (4, 4.0), (3, 5.0)]]
    assert because(stand_in(), None, RATED, RATINGS, np.array([0])) == expected
    assert because(stand_in(blend=False), USER, RATED, RATINGS, np.array([0])) == expected


def test_a_user_with_no_ratings_gets_no_reasons():
    none = np.zeros(0, dtype=np.int32), np.zeros(0)
    assert because(stand_in(), USER, *none, np.array([0, 7, 8])) == [[], [], []]
    assert because(stand_in(), None, *none, np.array([0])) == [[]]
    assert because(stand_in(), USER, RATED, RATINGS, np.zeros(0, dtype=np.int64)) == []


def test_several_rows_at_once_in_the_list_order():
    # Row 9 has no rated neighbour and no ranking factors; row 4 is rated itself and is no reason for itself.
    got = because(stand_in(), USER, RATED, RATINGS, np.array([8, 9, 0, 7, 4]))
    assert got == [[(1, 4.5), (4, 4.0), (3, 5.0)], [], [(3, 5.0), (1, 4.5), (4, 4.0)], [(4, 4.0), (1, 4.5)],
                   [(1, 4.5), (3, 5.0)]]
    assert all(isinstance(row, int) and isinstance(rating, float) for reasons in got for row, rating in reasons)


@pytest.fixture
def snapshot() -> Snapshot:
    """A real Snapshot over random models with a neighbourhood; the catalogue has movies no model has seen."""
    rng = np.random.default_rng(8)
    users, movies, width = np.arange(1, 6), np.arange(200, 260), 12
    rating = RatingModel(mu=3.5, user_ids=users, user_bias=rng.normal(0, 0.3, 5),
                         user_factors=rng.normal(0, 0.5, (5, 3)), movie_ids=movies,
                         movie_bias=rng.normal(0, 0.5, 60), movie_factors=rng.normal(0, 0.5, (60, 3)),
                         params=RatingParams(rank=3), scale=Scale(0.5, 5.0, 0.5))
    ranking = RankingModel(user_ids=users, user_factors=rng.normal(0, 1, (5, 6)), movie_ids=movies,
                           movie_factors=rng.normal(0, 1, (60, 6)), params=RankingParams(rank=6))
    near = np.array([rng.permutation(np.delete(np.arange(60), i))[:width] for i in range(60)], dtype=np.int32)
    near[::7, -3:] = -1  # some rows with fewer neighbours
    sims = np.sort(rng.uniform(-0.3, 1.0, (60, width)), axis=1)[:, ::-1].astype(np.float32)
    sims[near < 0] = 0.0
    neighbourhood = NeighbourModel(near, sims, NeighbourParams(neighbours=width, k=5))
    return Snapshot.build(Models(rating, ranking, neighbourhood), np.arange(195, 265))


def test_matches_the_neighbourhood_the_prediction_sums_on_a_real_snapshot(snapshot):
    """Every positive term neighbour_sums adds, largest first, checked one neighbour at a time."""
    rng = np.random.default_rng(2)
    n = len(snapshot.movie_ids)
    rated = np.sort(rng.choice(n, 30, replace=False))
    ratings = rng.choice(np.arange(0.5, 5.5, 0.5), 30)
    user = snapshot.user_vectors(3)
    rows = np.setdiff1d(np.arange(n), rated)
    got = because(snapshot, user, rated, ratings, rows, per_movie=100)
    residuals = user_residuals(n, rated, ratings, snapshot.models.rating.mu + user.bias, snapshot.movie_bias)
    sx, _ = neighbour_sums(snapshot.neighbours, snapshot.similarity, rows, residuals, 5)
    star = dict(zip(rated.tolist(), ratings.tolist()))
    explained = 0
    for row, reasons, total in zip(rows.tolist(), got, sx.tolist()):
        terms = []  # (contribution, neighbour) of the first k rated neighbours of positive similarity
        for neighbour, s in zip(snapshot.neighbours[row].tolist(), snapshot.similarity[row].tolist()):
            if neighbour >= 0 and s > 0 and neighbour in star and len(terms) < 5:
                terms.append((s * residuals[neighbour], neighbour))
        assert sum(c for c, _ in terms) == pytest.approx(total)
        positive = [(neighbour, star[neighbour]) for c, neighbour in sorted(terms, key=lambda t: -t[0]) if c > 0]
        if positive:
            explained += 1
            assert reasons == positive
        else:  # the ranking model's: rated, not the row itself
            assert all(r in star and r != row for r, _ in reasons)
    assert explained > len(rows) // 2
