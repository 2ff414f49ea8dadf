"""The engine as users rely on it: filters, fold-in, retraining, saved models, restarts."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import FAST, copy_model, quick
from fixtures import write_dataset

from engine import InputError, NotFound


def _ids(result):
    return [m["movieId"] for m in result["movies"]]


def test_recommendations_exclude_rated_and_obey_min_count(make_engine, csv_fixture):
    engine = make_engine(csv_fixture.path)
    rated = {m for u, m, _ in csv_fixture.ratings if u == 1}
    result = engine.recommend(1, 1000, min_count=0)
    assert result["movies"] and not rated & set(_ids(result))
    assert len(result["movies"]) == 40 - len(rated)
    scores = [m["score"] for m in result["movies"]]
    assert scores == sorted(scores, reverse=True)
    threshold = sorted(engine.counts)[len(engine.counts) // 2]
    filtered = engine.recommend(1, 1000, min_count=int(threshold))
    assert filtered["movies"] and all(m["ratings_count"] >= threshold for m in filtered["movies"])
    assert len(filtered["movies"]) < len(result["movies"]) or threshold == min(engine.counts)


def test_genre_filter_and_unknown_genre(make_engine, csv_fixture):
    engine = make_engine(csv_fixture.path)
    user = next(u for u in csv_fixture.groups if (u, 2) not in {(r[0], r[1]) for r in csv_fixture.ratings})
    result = engine.recommend(user, 50, min_count=0, genre="crime")
    assert _ids(result) == [2]  # the only crime film, unrated by this user; the genre is case-insensitive
    for movie in engine.recommend(2, 50, min_count=0, genre="Drama")["movies"]:
        assert "Drama" in movie["genres"]
    with pytest.raises(InputError, match="unknown genre"):
        engine.recommend(2, 5, genre="Western")


def test_new_user_is_folded_in_at_once(make_engine, csv_fixture):
    engine = make_engine(csv_fixture.path)
    assert engine.recommend(5000, 5, min_count=0)["fallback"] == "popular"
    posted = [(m, 5.0) for m in csv_fixture.comedies[:5]] + [(m, 1.0) for m in csv_fixture.dramas[:5]]
    answer = engine.add_ratings(5000, posted)
    assert answer == {"user": 5000, "accepted": 10, "model_version": 1}
    top = engine.recommend(5000, 5, min_count=0)
    assert "fallback" not in top
    assert set(_ids(top)) <= set(csv_fixture.comedies) - {m for m, _ in posted}
    assert engine.predict(5000, csv_fixture.comedies[0])["user_rating"] == 5.0
    assert engine.predict(5000, csv_fixture.comedies[-1])["predicted_rating"] > \
        engine.predict(5000, csv_fixture.dramas[-1])["predicted_rating"] + 1.5


def test_a_new_rating_replaces_the_old_one(make_engine, csv_fixture):
    engine = make_engine(csv_fixture.path)
    movie, old = next((m, r) for u, m, r in csv_fixture.ratings if u == 1)
    count = engine.movie(movie)["ratings_count"]
    engine.add_ratings(1, [(movie, 0.5 if old != 0.5 else 1.0)])
    rated = {r["movieId"]: r["rating"] for r in engine.rated(1)}
    assert rated[movie] != old and list(rated).count(movie) == 1
    assert engine.movie(movie)["ratings_count"] == count


@pytest.mark.parametrize("pairs,message", [
    ([], "no ratings"),
    ([(99_999, 4.0)], "unknown movie"),
    ([(1, 5.5)], "not on the scale"),
    ([(1, 4.25)], "not on the scale"),
    ([(1, float("nan"))], "not on the scale"),
    ([(1, 4.0), (1, 3.0)], "twice"),
])
def test_bad_batches_are_rejected_whole(make_engine, csv_fixture, pairs, message):
    engine = make_engine(csv_fixture.path)
    before = engine.store.entries()
    with pytest.raises(InputError, match=message):
        engine.add_ratings(7, [(2, 4.0)] + pairs if pairs else pairs)
    assert engine.store.entries() == before
    assert engine.rated(7) == [{"movieId": m, "title": csv_fixture.titles[m], "rating": r}
                               for u, m, r in sorted(csv_fixture.ratings, key=lambda t: t[1]) if u == 7]


def test_predicted_ratings_are_the_blend_that_evaluation_scores(make_engine, csv_fixture):
    """The service's predicted rating (single movie and top-N) is what evaluate.py measures: the rating model
    blended with the neighbourhood of the user's own ratings, not ALS alone."""
    engine = make_engine(csv_fixture.path)
    models = engine._snapshot.models
    assert models.blend is not None
    user = 1
    rated = engine.user_ratings_of(user)
    top = engine.recommend(user, 5, min_count=0)["movies"]
    movies = np.array([m["movieId"] for m in top])
    parts = models.ingredients(user, movies, engine.movie_ids[rated.rows], rated.ratings)
    predicted = models.compare(parts)
    expected = np.round(models.rating.clip(predicted["blend"]), 4)
    assert [m["predicted_rating"] for m in top] == expected.tolist()
    assert [engine.predict(user, int(m))["predicted_rating"] for m in movies] == expected.tolist()
    assert not np.allclose(predicted["blend"], predicted["als"])
    assert np.all(parts.ss > 0)  # every movie had rated neighbours


def test_unknown_movie_is_not_found(make_engine, csv_fixture):
    engine = make_engine(csv_fixture.path)
    with pytest.raises(NotFound):
        engine.predict(1, 424242)
    with pytest.raises(NotFound):
        engine.similar(424242)


def test_similar_movies_share_the_taste_group(make_engine, csv_fixture):
    engine = make_engine(csv_fixture.path)
    similar = engine.similar(csv_fixture.comedies[0], 5)
    assert len(similar) == 5
    assert {m["movieId"] for m in similar} <= set(csv_fixture.comedies)


def test_sync_retrain_bumps_the_version_and_keeps_results(make_engine, csv_fixture):
    engine = make_engine(csv_fixture.path, retrain="sync")
    posted = [(m, 5.0) for m in csv_fixture.dramas[:6]] + [(m, 0.5) for m in csv_fixture.comedies[:6]]
    before = engine.recommend(6000, 5, min_count=0)
    answer = engine.add_ratings(6000, posted)
    assert answer["model_version"] == 2 == engine.model_version
    after = engine.recommend(6000, 5, min_count=0)
    assert before["fallback"] == "popular" and set(_ids(after)) <= set(csv_fixture.dramas)
    assert engine.health()["pending_ratings"] == 0


@pytest.mark.slow  # several trainings
def test_async_retrain_runs_in_the_background_and_coalesces(make_engine, csv_fixture):
    engine = make_engine(csv_fixture.path, retrain="async")
    for i in range(5):
        engine.add_ratings(7000 + i, [(m, 4.5) for m in csv_fixture.comedies[:4]])
    assert engine.wait_idle(120)
    health = engine.health()
    assert 2 <= health["model_version"] <= 3  # five posts, at most two retrains
    assert health["pending_ratings"] == 0 and health["training"] is False
    models = engine._snapshot.models  # the retrained models know the new users
    assert models.rating.user_row(7004) is not None and models.ranking.user_row(7004) is not None


def test_restart_keeps_acknowledged_ratings_and_reuses_the_model(make_engine, csv_fixture, tmp_path):
    model_dir = tmp_path / "shared-model"
    first = make_engine(csv_fixture.path, model_dir)
    first.add_ratings(8000, [(1, 4.5), (2, 1.0)])
    first.close()
    second = make_engine(csv_fixture.path, model_dir)
    assert second.model_source == "loaded"  # the store grew, but the model was trained before that
    assert second.rated(8000) == [{"movieId": 1, "title": csv_fixture.titles[1], "rating": 4.5},
                                  {"movieId": 2, "title": csv_fixture.titles[2], "rating": 1.0}]
    assert second.health()["pending_ratings"] == 2
    assert "fallback" not in second.recommend(8000, 3, min_count=0)


@pytest.mark.slow  # several trainings
def test_saved_model_is_retrained_when_params_or_data_change(make_engine, csv_fixture, tmp_path):
    model_dir = tmp_path / "m"
    make_engine(csv_fixture.path, model_dir).close()
    assert make_engine(csv_fixture.path, model_dir).model_source == "loaded"
    assert make_engine(csv_fixture.path, model_dir).model_source == "loaded"
    other_rating = quick(rating_rank=3)  # only whether the engine trains or loads matters here
    assert make_engine(csv_fixture.path, model_dir, params=other_rating).model_source == "trained"
    other_ranking = replace(other_rating, ranking=replace(other_rating.ranking, alpha=1.0))
    assert make_engine(csv_fixture.path, model_dir, params=other_ranking).model_source == "trained"
    assert make_engine(csv_fixture.path, model_dir, params=other_ranking).model_source == "loaded"
    other = write_dataset(tmp_path / "other", "csv", n_users=20, n_movies=40, seed=5)
    assert make_engine(other.path, model_dir, params=other_ranking).model_source == "trained"


def test_damaged_model_directory_is_retrained_not_served(make_engine, csv_fixture, tmp_path):
    model_dir = tmp_path / "m"
    make_engine(csv_fixture.path, model_dir).close()
    arrays = next(model_dir.glob("model-*.npz"))
    arrays.write_bytes(arrays.read_bytes()[:100])
    engine = make_engine(csv_fixture.path, model_dir)
    assert engine.model_source == "trained"
    meta = json.loads((model_dir / "model.json").read_text())
    assert (model_dir / meta["arrays"]).exists() and not arrays.exists()


def test_whole_star_dataset_uses_a_whole_star_scale(make_engine, tmp_path):
    fx = write_dataset(tmp_path / "ml-100k", "100k", n_users=20, n_movies=20)
    engine = make_engine(fx.path)
    assert (engine.scale.low, engine.scale.high, engine.scale.step) == (1.0, 5.0, 1.0)
    with pytest.raises(InputError, match="not on the scale"):
        engine.add_ratings(1, [(1, 4.5)])
    assert 1.0 <= engine.predict(99, 1)["predicted_rating"] <= 5.0


def test_a_given_scale_overrides_the_inferred_one(sc, csv_fixture, tmp_path):
    from engine import RecommendationEngine
    from model import Scale

    engine = RecommendationEngine(sc, str(csv_fixture.path), tmp_path / "m", params=FAST, retrain="off",
                                  scale=Scale(1.0, 5.0, 1.0))
    try:
        with pytest.raises(InputError, match="1 to 5 in steps of 1"):
            engine.add_ratings(1, [(1, 4.5)])
        assert all(1.0 <= m["predicted_rating"] <= 5.0 for m in engine.recommend(1, 40, min_count=0)["movies"])
    finally:
        engine.close()


def _series(engine, words: str) -> list[int]:
    return [m["movieId"] for m in engine.search(words, 50)]


@pytest.fixture(scope="module")
def real_engine(sc, real_dataset, real_model, tmp_path_factory):
    from engine import RecommendationEngine
    from model import ModelParams

    model_dir = copy_model(real_model, tmp_path_factory.mktemp("real") / "model")
    engine = RecommendationEngine(sc, str(real_dataset), model_dir, params=ModelParams(), retrain="off")
    assert engine.model_source == "loaded"
    yield engine
    engine.close()


def test_a_fan_of_two_series_gets_more_of_them_at_once(real_engine):
    """Five Star Wars / Lord of the Rings ratings fold in before any retrain and bring the series' other films."""
    star_wars = [m for m in _series(real_engine, "star wars: episode") if real_engine.counts[real_engine.movie_row(m)]]
    rings = _series(real_engine, "lord of the rings: the")
    posted = [(m, 5.0) for m in star_wars[:3] + rings[:2]]
    assert len(posted) == 5
    real_engine.add_ratings(900_001, posted)
    top = real_engine.recommend(900_001, 10)
    assert "fallback" not in top and real_engine.model_version == 1
    ids = {m["movieId"] for m in top["movies"]}
    assert not ids & {m for m, _ in posted}
    assert ids & (set(star_wars[3:]) | set(rings[2:])), [m["title"] for m in top["movies"]]


def test_top_10_has_no_ties_from_clipping(real_engine):
    """Ranking uses unclipped scores: the order is strict even where the shown stars are clipped at 5."""
    clipped_somewhere = False
    for user in (154, 251, 53):
        movies = real_engine.recommend(user, 10)["movies"]
        scores = [m["score"] for m in movies]
        assert len(movies) == 10 and all(a > b for a, b in zip(scores, scores[1:]))
        clipped_somewhere |= sum(m["predicted_rating"] == 5.0 for m in movies) >= 2
    assert clipped_somewhere  # these users rate generously: several shown predictions hit the top of the scale


def test_similar_movies_come_from_the_ranking_model_and_respect_min_count(real_engine):
    toy_story = real_engine.movie_row(1)
    similar = real_engine.similar(1, 10)
    assert len(similar) == 10 and all(m["ratings_count"] >= 25 for m in similar)
    assert 3114 in {m["movieId"] for m in similar}  # Toy Story 2
    unit = real_engine._snapshot.rank_unit
    expected = [float(unit[real_engine.movie_row(m["movieId"])] @ unit[toy_story]) for m in similar]
    assert [m["similarity"] for m in similar] == pytest.approx(expected, abs=1e-4)
    assert all(m["ratings_count"] >= 3 for m in real_engine.similar(1, 20, min_count=3))
