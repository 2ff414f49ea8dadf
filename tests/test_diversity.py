"""serving.diversity on hand-built vectors: MMR re-ranking, the pool it reads, and the two diversity measures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.diversity import distinct_genres, intra_list_diversity, pool_size, rerank

# Catalogue rows 0..5; the pool below is rows 4, 1, 3, 0 (a, b, c, d), best first.  Row 2 is a zero vector.
UNIT = np.array([[0, 0, 1],  # d
                 [0.8, 0.6, 0],  # b: cos(a, b) = 0.8, cos(b, c) = 0.6
                 [0, 0, 0],  # a movie the ranking model has not seen
                 [0, 1, 0],  # c
                 [1, 0, 0],  # a
                 [1, 0, 0],  # a duplicate of a
                 [-1, 0, 0]], dtype=np.float32)  # the opposite of a: cosine -1
POOL = np.array([4, 1, 3, 0])
SCORES = np.array([10.0, 9.5, 7.5, 5.0])  # relevance, min-max scaled: 1, 0.9, 0.5, 0


def test_pool_size_is_n_at_strength_0_and_a_capped_multiple_otherwise():
    assert pool_size(10, 0) == 10 and pool_size(0, 0.5) == 0
    assert pool_size(10, 0.2) == 30  # 3n
    assert pool_size(5, 1) == 25  # n + 20
    assert pool_size(500, 0.5) == 700  # capped at n + 200


def test_strength_0_is_the_first_n_untouched():
    rows, scores = rerank(UNIT, POOL, SCORES, 3, 0)
    assert rows.tolist() == [4, 1, 3] and scores.tolist() == [10.0, 9.5, 7.5]
    rows, scores = rerank(UNIT, POOL, SCORES, 9, 0)  # n beyond the pool: all of it
    assert rows.tolist() == POOL.tolist() and scores.tolist() == SCORES.tolist()


def test_strength_1_keeps_the_first_then_picks_the_least_similar_to_those_picked():
    # After a: max cosine b 0.8, c 0, d 0 -> c (the tie with d goes to pool order); then b max(0.8, 0.6), d 0 -> d.
    rows, scores = rerank(UNIT, POOL, SCORES, 4, 1)
    assert rows.tolist() == [4, 3, 0, 1]
    assert scores.tolist() == [10.0, 7.5, 5.0, 9.5]  # each row keeps its own score


def test_strength_half_trades_relevance_against_similarity_by_hand():
    # gain = 0.5 relevance - 0.5 max cosine to the picked.  Pick 1: a (0.5).  Pick 2: b 0.45 - 0.4 = 0.05,
    # c 0.25 - 0 = 0.25, d 0 - 0 = 0 -> c.  Pick 3: b 0.45 - 0.5 max(0.8, 0.6) = 0.05, d 0 -> b.  Then d.
    rows, _ = rerank(UNIT, POOL, SCORES, 4, 0.5)
    assert rows.tolist() == [4, 3, 1, 0]
    # Relevance is scaled within the pool: any increasing affine change of the scores picks the same.
    assert rerank(UNIT, POOL, 100 * SCORES - 7, 4, 0.5)[0].tolist() == [4, 3, 1, 0]
    # A weak pull: at 0.2, b's gain 0.72 - 0.16 beats c's 0.4, and the list is the plain order.
    assert rerank(UNIT, POOL, SCORES, 4, 0.2)[0].tolist() == [4, 1, 3, 0]


def test_equal_gains_go_in_pool_order():
    # Equal scores (no relevance to tell them apart) and orthogonal vectors: every gain ties at every pick.
    pool = np.array([3, 0, 4])
    for strength in (0.3, 1):
        assert rerank(UNIT, pool, np.ones(3), 3, strength)[0].tolist() == [3, 0, 4]
    # Equal scores with similar vectors: relevance ties, so similarity alone orders what follows the first.
    assert rerank(UNIT, np.array([4, 1, 3]), np.ones(3), 3, 0.5)[0].tolist() == [4, 3, 1]
    # A duplicate of the first pick goes last, behind a zero vector (cosine 0 with everything).
    rows, _ = rerank(UNIT, np.array([4, 5, 2]), np.array([3.0, 2.0, 1.0]), 3, 0.5)
    assert rows.tolist() == [4, 2, 5]


def test_a_negative_cosine_counts_as_it_is():
    # Pool a, c, the opposite of a; relevance 1, 0.2, 0.  After a: c 0.1 - 0 = 0.1, opposite 0 + 0.5 = 0.5.
    rows, _ = rerank(UNIT, np.array([4, 3, 6]), np.array([10.0, 8.0, 7.5]), 3, 0.5)
    assert rows.tolist() == [4, 6, 3]


def test_n_beyond_the_pool_returns_the_whole_pool_reranked():
    rows, scores = rerank(UNIT, POOL, SCORES, 10, 0.5)
    assert rows.tolist() == [4, 3, 1, 0] and len(scores) == 4
    assert rerank(UNIT, POOL[:1], SCORES[:1], 5, 0.5)[0].tolist() == [4]
    assert rerank(UNIT, POOL[:0], SCORES[:0], 5, 0.5)[0].tolist() == []  # no candidates at all
    assert rerank(UNIT, POOL, SCORES, 2, 0.5)[0].tolist() == [4, 3]  # n short of the pool: the first n picks


def test_strength_outside_0_to_1_is_refused():
    with pytest.raises(ValueError, match="strength"):
        rerank(UNIT, POOL, SCORES, 2, 1.5)


def test_intra_list_diversity_is_the_mean_cosine_distance_over_pairs():
    # a, b, c: cosines 0.8, 0, 0.6 -> distances 0.2, 1, 0.4.
    assert math.isclose(intra_list_diversity(UNIT, np.array([4, 1, 3])), 1.6 / 3, rel_tol=1e-6)
    assert math.isclose(intra_list_diversity(UNIT, np.array([4, 5])), 0.0, abs_tol=1e-7)  # the same vector
    assert math.isclose(intra_list_diversity(UNIT, np.array([4, 2])), 1.0)  # a zero vector: cosine 0
    assert intra_list_diversity(UNIT, np.array([4])) == 0.0 and intra_list_diversity(UNIT, np.array([], int)) == 0.0


def test_distinct_genres_counts_each_genre_once_per_list():
    genres = [("Comedy",), ("Comedy", "Drama"), (), ("Drama", "Crime")]
    assert distinct_genres(genres, np.array([0, 1])) == 2
    assert distinct_genres(genres, np.array([0, 2])) == 1
    assert distinct_genres(genres, np.array([0, 1, 3])) == 3
    assert distinct_genres(genres, np.array([], dtype=int)) == 0
