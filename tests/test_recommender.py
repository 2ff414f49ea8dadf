"""The serving side as users rely on it: filters, fold-in, re-ratings, bad batches, predictions, versions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.errors import InputError, NotFound, Unavailable


def _ids(top):
    return [s.movie.movie_id for s in top.movies]


def test_recommendations_exclude_rated_and_obey_min_count(make_recommender, csv_fixture):
    rec = make_recommender()
    counts = rec.current().counts
    rated = {m for u, m, _ in csv_fixture.ratings if u == 1}
    top = rec.recommend(1, 1000, min_count=0)
    assert top.movies and not rated & set(_ids(top))
    assert len(top.movies) == 40 - len(rated)
    scores = [s.ranking_score for s in top.movies]
    assert scores == sorted(scores, reverse=True)
    threshold = sorted(counts)[len(counts) // 2]
    filtered = rec.recommend(1, 1000, min_count=int(threshold))
    assert filtered.movies and all(s.movie.ratings_count >= threshold for s in filtered.movies)
    assert len(filtered.movies) < len(top.movies) or threshold == min(counts)


def test_genre_filter_and_unknown_genre(make_recommender, csv_fixture):
    rec = make_recommender()
    user = next(u for u in csv_fixture.groups if (u, 2) not in {(r[0], r[1]) for r in csv_fixture.ratings})
    assert _ids(rec.recommend(user, 50, min_count=0, genre="crime")) == [2]  # the only crime film; any case
    for scored in rec.recommend(2, 50, min_count=0, genre="Drama").movies:
        assert "Drama" in scored.movie.genres
    with pytest.raises(InputError, match="unknown genre"):
        rec.recommend(2, 5, genre="Western")


def test_a_new_user_is_served_from_the_posted_ratings_at_once(make_recommender, csv_fixture):
    rec = make_recommender()
    assert rec.recommend(5000, 5, min_count=0).fallback == "popular"
    posted = [(m, 5.0) for m in csv_fixture.comedies[:5]] + [(m, 1.0) for m in csv_fixture.dramas[:5]]
    assert rec.add_ratings(5000, posted).body["model_version"] == 1
    top = rec.recommend(5000, 5, min_count=0)
    assert top.fallback is None
    assert set(_ids(top)) <= set(csv_fixture.comedies) - {m for m, _ in posted}
    assert rec.predict(5000, csv_fixture.comedies[0]).user_rating == 5.0
    assert rec.predict(5000, csv_fixture.comedies[-1]).predicted_rating > \
        rec.predict(5000, csv_fixture.dramas[-1]).predicted_rating + 1.5


def test_posted_ratings_are_folded_in_when_the_user_is_asked_about_and_never_from_stale_ratings(
        make_recommender, csv_fixture):
    """A POST folds the ratings in (counts, the user's ratings) but not yet the vectors: those are computed
    at the user's next answer, in the process that answers.  A fold that was computing from ratings that
    newer ones replaced meanwhile does not overwrite them."""
    import threading

    from storage.catalogue import UserRatings

    rec = make_recommender()
    rec.add_ratings(5001, [(m, 5.0) for m in csv_fixture.comedies[:3]])
    snapshot = rec.current().snapshot
    assert isinstance(snapshot.folded[5001], UserRatings)  # nobody asked yet: no fold spent
    first = rec.recommend(5001, 5, min_count=0)
    assert first.fallback is None and not isinstance(snapshot.folded[5001], UserRatings)

    inside, release, real_fold = threading.Event(), threading.Event(), snapshot.fold
    older = UserRatings(np.array([0], dtype=np.int32), np.array([5.0]))
    newer = UserRatings(np.array([1, 2], dtype=np.int32), np.array([1.0, 4.0]))

    def slow_fold(rows, ratings):
        inside.set()
        assert release.wait(30)
        return real_fold(rows, ratings)

    snapshot.posted(5002, older)
    snapshot.fold = slow_fold
    answered = {}
    asker = threading.Thread(target=lambda: answered.update(v=snapshot.user_vectors(5002)))
    asker.start()
    assert inside.wait(30)
    snapshot.posted(5002, newer)  # newer ratings arrive while the older ones are being folded
    release.set()
    asker.join(30)
    del snapshot.fold  # the class's again
    assert np.allclose(answered["v"].ranking, real_fold(older.rows, older.ratings).ranking)  # its own answer
    assert snapshot.folded[5002] is newer  # not overwritten by the stale vectors: folded at the next ask
    assert np.allclose(snapshot.user_vectors(5002).ranking, real_fold(newer.rows, newer.ratings).ranking)


def test_an_answer_never_comes_from_a_version_swapped_in_behind_the_one_it_replaced(
        make_recommender, csv_fixture, monkeypatch):
    """A version loaded while ratings kept arriving is swapped in a little behind the one it replaces (the
    old one was folded in meanwhile).  A request that looked at the old view just before the swap must still
    answer from a view folded in up to its start, not from the new one as it was loaded."""
    from serving.loader import View
    from serving.state import Served
    from storage.store import Store

    rec = make_recommender()
    old = rec.loader.view
    behind = View(old.plan, old.newest, {n: Served(s.version) for n, s in old.served.items()}, old.fallback)
    movie = csv_fixture.comedies[0]
    rec.add_ratings(5003, [(movie, 4.5)])  # the view in service folds it in; ``behind`` has not
    real = Store.last_seq
    swapped = []

    def swap_then_read(store):  # the swap lands between the request's look at the view and its store read
        if not swapped:
            swapped.append(True)
            rec.loader.view = behind
        return real.fget(store)

    monkeypatch.setattr(Store, "last_seq", property(swap_then_read))
    assert [(m.movie_id, r) for m, r in rec.rated(5003)] == [(movie, 4.5)] and swapped


def test_a_new_rating_replaces_the_old_one(make_recommender, csv_fixture):
    rec = make_recommender()
    movie, old = next((m, r) for u, m, r in csv_fixture.ratings if u == 1)
    count = rec.movie(movie)[0].ratings_count
    rec.add_ratings(1, [(movie, 0.5 if old != 0.5 else 1.0)])
    rated = {m.movie_id: r for m, r in rec.rated(1)}
    assert rated[movie] != old and [m.movie_id for m, _ in rec.rated(1)].count(movie) == 1
    assert rec.movie(movie)[0].ratings_count == count


@pytest.mark.parametrize("pairs,message", [
    ([], "no ratings"),
    ([(99_999, 4.0)], "unknown movie"),
    ([(1, 5.5)], "not on the scale"),
    ([(1, 4.25)], "not on the scale"),
    ([(1, float("nan"))], "not on the scale"),
    ([(1, 4.0), (1, 3.0)], "twice"),
])
def test_bad_batches_are_rejected_whole(make_recommender, csv_fixture, pairs, message):
    rec = make_recommender()
    before = rec.store.entries()
    with pytest.raises(InputError, match=message):
        rec.add_ratings(7, [(2, 4.0)] + pairs if pairs else pairs)
    assert rec.store.entries() == before
    assert [(m.movie_id, m.title, r) for m, r in rec.rated(7)] == \
        [(m, csv_fixture.titles[m], r) for u, m, r in sorted(csv_fixture.ratings, key=lambda t: t[1]) if u == 7]


def test_labels_must_match_the_pairs(make_recommender):
    rec = make_recommender()
    with pytest.raises(ValueError):  # a short label list must not leave the tail unchecked
        rec.add_ratings(1, [(1, 4.0), (424242, 4.0)], ["line 1"])


def test_predicted_ratings_are_the_blend_that_evaluation_scores(make_recommender):
    """The service's predicted rating (single movie and top-N) is what evaluate.py measures: the rating model
    blended with the neighbourhood of the user's own ratings, not ALS alone."""
    rec = make_recommender()
    served = rec.current()
    models = served.snapshot.models
    assert models.blend is not None
    user = 1
    rated = served.ratings_of(user)
    top = rec.recommend(user, 5, min_count=0).movies
    movies = np.array([s.movie.movie_id for s in top])
    parts = models.ingredients(user, movies, served.catalogue.movie_ids[rated.rows], rated.ratings)
    predicted = models.compare(parts)
    expected = np.round(models.rating.clip(predicted["blend"]), 4)
    assert [s.predicted_rating for s in top] == expected.tolist()
    assert [rec.predict(user, int(m)).predicted_rating for m in movies] == expected.tolist()
    assert not np.allclose(predicted["blend"], predicted["als"])
    assert np.all(parts.ss > 0)  # every movie had rated neighbours


def test_unknown_movie_is_not_found(make_recommender):
    rec = make_recommender()
    with pytest.raises(NotFound):
        rec.predict(1, 424242)
    with pytest.raises(NotFound):
        rec.similar(424242)


def test_similar_movies_share_the_taste_group(make_recommender, csv_fixture):
    similar = make_recommender().similar(csv_fixture.comedies[0], 5)
    assert len(similar) == 5
    assert {m.movie_id for m, _ in similar} <= set(csv_fixture.comedies)


def test_before_the_first_version_every_answer_is_unavailable(tmp_path, make_recommender):
    rec = make_recommender(tmp_path / "empty")
    with pytest.raises(Unavailable, match="no model has been published"):
        rec.recommend(1, 5)
    with pytest.raises(Unavailable):
        rec.add_ratings(1, [(1, 4.0)])
    assert rec.store.entries() == []  # a POST before any version stores nothing


def test_a_write_by_another_process_is_seen_on_the_next_read(make_recommender, csv_fixture):
    """Two recommenders on one folder stand for two API processes: each folds in what the other stored."""
    a = make_recommender()
    b = make_recommender(a.model_dir)
    assert b.recommend(6100, 3, min_count=0).fallback == "popular"
    a.add_ratings(6100, [(m, 5.0) for m in csv_fixture.dramas[:4]])
    assert b.predict(6100, csv_fixture.dramas[0]).user_rating == 5.0
    assert set(_ids(b.recommend(6100, 3, min_count=0))) <= set(csv_fixture.dramas)
    assert b.movie(csv_fixture.dramas[0])[0].ratings_count == a.movie(csv_fixture.dramas[0])[0].ratings_count


def test_an_empty_list_says_why(make_recommender, csv_fixture):
    """min_count above every movie's count names the most-rated movie's count; a user who rated every movie
    a filter passes is told so; a list with movies has no reason."""
    rec = make_recommender()
    largest = int(rec.current().counts.max())
    top = rec.recommend(1, 10, min_count=largest + 1)
    assert top.movies == []
    assert top.reason == f"no movie has {largest + 1} ratings or more: the most-rated has {largest}"
    rec.add_ratings(6300, [(m, 4.0) for m in csv_fixture.dramas])
    top = rec.recommend(6300, 10, min_count=0, genre="Drama")
    assert top.movies == [] and top.reason == f"you have rated all {len(csv_fixture.dramas)} movie(s) in Drama " \
        "with at least 0 ratings"
    top = rec.recommend(6300, 10, min_count=0)
    assert top.movies and top.reason is None
    assert all(s.ranking_score is not None for s in top.movies)
    fallback = rec.recommend(6301, 3, min_count=0)  # nobody: the most-rated, ordered by their count
    assert fallback.fallback == "popular" and all(s.ranking_score is None for s in fallback.movies)
    counts = [s.movie.ratings_count for s in fallback.movies]
    assert counts == sorted(counts, reverse=True)


def test_live_quality_scores_each_posted_rating_before_it_is_stored(make_recommender, csv_fixture):
    """A scripted stream: the live RMSE and MAE are those of the predictions the service gave just before
    each post (computed here by asking for them), and the hit rate counts liked posts by users who had been
    shown a list; a refused post counts nothing."""
    rec = make_recommender()
    version = rec.version
    user, stranger = 6400, 6401
    shown = [s.movie.movie_id for s in rec.recommend(user, 3, min_count=0).movies]
    outside = next(m for m in csv_fixture.comedies + csv_fixture.dramas if m not in shown)
    stream = [(user, [(shown[0], 5.0), (outside, 4.5)]), (user, [(shown[1], 2.0)]), (stranger, [(outside, 5.0)])]
    errors = []
    for who, pairs in stream:
        errors += [rec.predict(who, m).predicted_rating - r for m, r in pairs]
        rec.add_ratings(who, pairs)
    with pytest.raises(InputError):
        rec.add_ratings(user, [(outside, 9.0)])  # off the scale: refused, not scored
    [live] = rec.status()["live_quality"]
    assert live["version"] == version and live["ratings"] == 4
    assert live["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 4), abs=2e-4)
    assert live["mae"] == pytest.approx(sum(abs(e) for e in errors) / 4, abs=2e-4)
    # Liked by a user who had been shown a list: shown[0] (a hit) and `outside` (a miss); 2.0 is not liked,
    # and the stranger was never shown one.
    assert (live["liked"], live["hit_rate"]) == (2, 0.5)


def test_live_quality_is_kept_per_version_newest_first():
    from serving.quality import LiveQuality

    quality = LiveQuality()
    quality.posted(1, 10, [1, 2], [4.0, 3.0], [5.0, 3.0], seq=1)
    quality.posted(2, 10, [3], [2.0], [4.0], seq=2)
    assert quality.summary() == [
        {"version": 2, "ratings": 1, "rmse": 2.0, "mae": 2.0, "liked": 0, "hit_rate": None},
        {"version": 1, "ratings": 2, "rmse": round(math.sqrt(0.5), 4), "mae": 0.5, "liked": 0, "hit_rate": None}]


def test_new_users_get_the_next_free_id_once(make_recommender):
    """Above every user the version knows, never an id someone already posted to, never the same one twice
    (the counter is in the store every API process shares)."""
    rec = make_recommender()
    known = int(rec.current().histories.users.max())
    rec.add_ratings(known + 2, [(1, 4.0)])  # someone picked an id of their own
    first = rec.new_user().body["user"]
    second = rec.new_user().body["user"]
    assert (first, second) == (known + 1, known + 3)
    other = make_recommender(rec.model_dir)  # another process on the same store
    assert other.new_user().body["user"] == known + 4


def test_health_asks_the_store_for_its_counts_only_when_ratings_arrived(make_recommender, monkeypatch):
    """A flood of /health costs no count(*) per call: the pending count is read again only after a write."""
    rec = make_recommender()
    counted = []
    real = rec.store.ratings_after
    monkeypatch.setattr(rec.store, "ratings_after", lambda seq: counted.append(seq) or real(seq))
    assert [rec.status()["pending_ratings"] for _ in range(3)] == [0, 0, 0] and len(counted) == 1
    rec.add_ratings(7001, [(1, 4.0)])
    assert [rec.status()["pending_ratings"] for _ in range(3)] == [1, 1, 1] and len(counted) == 2


def test_a_fold_in_replaces_counts_and_sums_whole(make_recommender, csv_fixture):
    """A reader holding the counts and sums keeps a consistent state: a fold-in builds new arrays."""
    rec = make_recommender()
    served = rec.current()
    counts, sums = served.counts, served.sums
    counts_before, sums_before = counts.copy(), sums.copy()
    movie = csv_fixture.comedies[0]
    row = served.row(movie)
    rec.add_ratings(6400, [(movie, 4.5)])
    assert (counts == counts_before).all() and (sums == sums_before).all()
    assert served.counts is not counts and served.counts[row] == counts_before[row] + 1
    assert served.sums[row] == sums_before[row] + 4.5
    rec.add_ratings(6400, [(movie, 2.0)])  # replaces the user's earlier rating of it
    assert served.counts[row] == counts_before[row] + 1 and served.sums[row] == sums_before[row] + 2.0


def test_a_copy_from_the_store_that_this_disk_cannot_hold_backs_off(make_recommender):
    """A full disk here: the store's version is not downloaded again at every poll (255 MB a time at 20M),
    but after 1 s, 2 s, 4 s ... (a clock the test moves)."""
    from model import TransientModelError

    rec = make_recommender()
    tries = []

    class FullDisk:
        def sync(self, versions, wanted=frozenset()):
            tries.append(now[0])
            raise TransientModelError("could not install model version 2: [Errno 28] No space left on device")

    now = [0.0]
    rec.shared, rec.clock = FullDisk(), lambda: now[0]
    for t in (0.0, 0.5, 1.0, 1.5, 2.9, 3.0, 6.0, 7.0):
        now[0] = t
        rec.refresh()
    assert tries == [0.0, 1.0, 3.0, 7.0] and rec.version == 1  # the version in service stays
