"""People's data and what may be shown, on the serving side: forgetting, withdrawn ratings, hidden movies,
the operators' movie rules and a list's filters, against what the fixture says by hand.

Two recommenders on one model folder stand for two API processes on one store (the real processes and the
hosts on PostgreSQL are in test_people_processes.py)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from serving.errors import InputError, NotFound
from serving.lists import ListFilters
from serving.movie_rules import MovieRules
from serving.personal import PersonalData
from storage.people import People
from storage.store import StoreError


def _ids(top) -> list[int]:
    return [s.movie.movie_id for s in top.movies]


def _dataset_ratings(fx, user: int) -> dict[int, float]:
    return {m: r for u, m, r in fx.ratings if u == user}


def _counts(fx, skip_user: int | None = None) -> dict[int, int]:
    out: dict[int, int] = {}
    for u, m, _ in fx.ratings:
        if u != skip_user:
            out[m] = out.get(m, 0) + 1
    return out


def test_forgetting_a_user_removes_them_from_serving_at_once_on_every_process(make_recommender, csv_fixture):
    a = make_recommender()
    b = make_recommender(a.model_dir)
    user = 3
    mine = _dataset_ratings(csv_fixture, user)
    a.add_ratings(user, [(m, 5.0) for m in list(mine)[:2]] + [(39, 4.0)])  # two replace dataset ratings
    a.recommend(user, 5, min_count=0)  # a list shown: a live-quality record of theirs
    assert b.rated(user) and b.recommend(user, 5, min_count=0).fallback is None
    stranger = b.predict(999_999, 1).predicted_rating
    answer = PersonalData(a).forget(user)
    posted_movies = set(list(mine)[:2]) | {39}
    assert answer == {"user": user, "posted_removed": 3,
                      "dataset_ratings_excluded": len(set(mine) - posted_movies)}
    assert a.quality._shown.get(user) is None  # before any list after the forget: that one is new
    assert all(u != user for q in a.quality._versions.values() for u, _ in q.errors)
    for rec in (a, b):  # b sees it with its next request's freshness read
        assert rec.rated(user) == []
        top = rec.recommend(user, 5, min_count=0)
        assert top.fallback == "popular" and all(s.ranking_score is None for s in top.movies)
        p = rec.predict(user, 1)
        assert p.user_rating is None and p.predicted_rating == stranger  # no fold-in, no trained factors
        expected = _counts(csv_fixture, skip_user=user)
        assert {m: rec.movie(m)[0].ratings_count for m in expected} == expected
    assert [e for e in a.store.entries() if e.user == user] == []  # deleted, not flagged
    assert People(a.store).excluded()[0] == {user}
    a.add_ratings(user, [(1, 2.0)])  # posting again starts afresh
    assert [(m.movie_id, r) for m, r in b.rated(user)] == [(1, 2.0)]


def test_a_forget_folded_in_between_a_posts_commit_and_its_live_quality_record_leaves_no_record(
        make_recommender, monkeypatch):
    a = make_recommender()
    user = 3
    append = a.store.append

    def append_then_forgotten(*args, **kwargs):  # another thread's forget lands right after this commit
        entry = append(*args, **kwargs)
        PersonalData(a).forget(user)
        return entry

    monkeypatch.setattr(a.store, "append", append_then_forgotten)
    a.add_ratings(user, [(39, 4.0)])
    assert all(u != user for q in a.quality._versions.values() for u, _ in q.errors)
    monkeypatch.setattr(a.store, "append", append)
    a.add_ratings(user, [(40, 4.0)])  # afterwards they start afresh, and count again
    assert [u for q in a.quality._versions.values() for u, _ in q.errors] == [user]


def test_withdrawing_a_rating_from_the_dataset_or_posted(make_recommender, csv_fixture):
    a = make_recommender()
    b = make_recommender(a.model_dir)
    user = 5
    mine = _dataset_ratings(csv_fixture, user)
    from_dataset = next(iter(mine))
    unrated_movie = next(m for m in range(1, 41) if m not in mine)
    count = a.movie(from_dataset)[0].ratings_count
    personal = PersonalData(a)
    assert personal.unrate(user, from_dataset) == {"user": user, "movieId": from_dataset, "withdrawn": True}
    assert from_dataset not in [m.movie_id for m, _ in b.rated(user)]
    assert b.movie(from_dataset)[0].ratings_count == count - 1
    assert b.predict(user, from_dataset).user_rating is None
    a.add_ratings(user, [(unrated_movie, 4.5)])
    personal.unrate(user, unrated_movie)
    assert unrated_movie not in [m.movie_id for m, _ in b.rated(user)]
    assert [e for e in a.store.entries() if e.user == user] == []
    with pytest.raises(NotFound, match="has not rated"):
        personal.unrate(user, unrated_movie)
    with pytest.raises(NotFound, match="unknown movie"):
        personal.unrate(user, 424242)
    a.add_ratings(user, [(from_dataset, 1.0)])  # rated again: it counts again
    assert dict((m.movie_id, r) for m, r in b.rated(user))[from_dataset] == 1.0


def test_hidden_movies_leave_every_list_of_that_user_only(make_recommender, csv_fixture):
    a = make_recommender()
    b = make_recommender(a.model_dir)
    user = 8  # group 0: likes comedies
    top = _ids(b.recommend(user, 3, min_count=0))
    personal = PersonalData(a)
    answer = personal.hide(user, top[:2])
    assert [h["movieId"] for h in answer["hidden"]] == sorted(top[:2])
    after = _ids(b.recommend(user, 3, min_count=0))
    assert not set(after) & set(top[:2]) and after[0] == top[2]
    other = user + 2  # another user still sees them
    assert set(top[:2]) <= set(_ids(b.recommend(other, 40, min_count=0))) | set(_dataset_ratings(csv_fixture, other))
    similar, _ = b.similar_for(user, top[2], 40, 0)
    assert not {m.movie_id for m, _ in similar} & set(top[:2])
    assert personal.unhide(user, top[0]) == {"user": user, "movieId": top[0], "hidden": False}
    assert _ids(b.recommend(user, 1, min_count=0)) == [top[0]]
    with pytest.raises(NotFound):
        personal.unhide(user, top[0])
    for bad in ([], [1.5], ["1"], {"a": 1}, [True], list(range(1001))):
        with pytest.raises(InputError):
            personal.hide(user, bad)
    with pytest.raises(InputError, match="unknown movie"):
        personal.hide(user, [1, 424242])
    assert [h["movieId"] for h in personal.hidden(user)["hidden"]] == [top[1]]  # nothing of the bad ones


def test_movie_rules_hide_a_movie_everywhere_and_open_and_close_a_window(make_recommender, csv_fixture):
    a = make_recommender()
    b = make_recommender(a.model_dir)
    now = [dt.datetime(2026, 12, 20, 12, tzinfo=dt.UTC).timestamp()]
    for rec in (a, b):
        rec.loader.now = lambda: now[0]
    user = 8
    first = _ids(b.recommend(user, 1, min_count=0))[0]
    rules = MovieRules(a)
    entry = rules.put(first, {"hidden": True})
    assert entry["hidden"] is True and entry["shown_today"] is False
    for u in (user, 9, 999_999):
        assert first not in _ids(b.recommend(u, 40, min_count=0))
    assert first not in [m.movie_id for m, _ in b.similar(1, 40, 0)]
    assert first not in [m.movie_id for m in b.search("movie", 100)]
    assert b.movie(first)[0].movie_id == first and b.predict(user, first).predicted_rating  # still looked up
    assert rules.delete(first) == {"movieId": first, "cleared": True}
    assert _ids(b.recommend(user, 1, min_count=0)) == [first]
    with pytest.raises(NotFound):
        rules.delete(first)
    rules.put(first, {"available_from": "2026-12-24", "available_until": "2027-01-07"})
    assert first not in _ids(b.recommend(user, 40, min_count=0))  # 20 December: not yet
    now[0] = dt.datetime(2026, 12, 24, 0, 0, 1, tzinfo=dt.UTC).timestamp()
    assert _ids(b.recommend(user, 1, min_count=0)) == [first]  # opens on the 24th
    now[0] = dt.datetime(2027, 1, 7, 23, 59, tzinfo=dt.UTC).timestamp()
    assert _ids(b.recommend(user, 1, min_count=0)) == [first]  # the 7th is included
    now[0] = dt.datetime(2027, 1, 8, tzinfo=dt.UTC).timestamp()
    assert first not in _ids(b.recommend(user, 40, min_count=0))  # closed
    assert [m["movieId"] for m in rules.list()["movies"]] == [first]
    for bad in ({"available_from": "2026-13-01"}, {"hidden": "yes"}, {"available_until": "tomorrow"},
                {"colour": "red"}, {"available_from": "2027-01-02", "available_until": "2027-01-01"}, {}, []):
        with pytest.raises(InputError):
            rules.put(first, bad)
    with pytest.raises(NotFound):
        rules.put(424242, {"hidden": True})
    assert list(b.shelf.rules) == [first]  # the bad ones changed nothing


def test_a_process_that_loses_the_store_after_it_loaded_still_keeps_the_movie_rules(make_recommender,
                                                                                      monkeypatch):
    a = make_recommender()
    user = 8
    first = _ids(a.recommend(user, 1, min_count=0))[0]
    MovieRules(a).put(first, {"hidden": True})
    PersonalData(a).hide(user, [_ids(a.recommend(user, 1, min_count=0))[0]])
    hidden = {first, *a.shelf.hidden_by(user).tolist()}
    b = make_recommender(a.model_dir)  # loads its version while the store answers, then the store fails

    def away(*args, **kwargs):
        raise StoreError("the ratings store is away")

    monkeypatch.setattr(type(b.store), "changes", away)
    monkeypatch.setattr(type(b.store), "last_seq", property(away))
    top = set(_ids(b.recommend(user, 40, min_count=0)))
    similar = {m.movie_id for m, _ in b.similar_for(user, 1, 40, 0)[0]}
    assert top and similar and not (top | similar) & hidden, (top, similar, hidden)  # the rules read at load


def _expected(fx, user, min_count, keep) -> set[int]:
    """The movies a list may hold, by hand: not rated by the user, enough ratings, passing ``keep``."""
    counts = _counts(fx)
    rated = set(_dataset_ratings(fx, user))
    return {m for m in range(1, 41) if m not in rated and counts.get(m, 0) >= min_count and keep(m)}


def _year(m: int) -> int:
    return {1: 1995, 2: 1994, 3: 1990, 4: 2001}.get(m, 1950 + m)  # tests/fixtures.py's titles


def _genres(m: int) -> set[str]:
    return ({"Comedy"} if m <= 20 else {"Drama"}) | ({"Crime"} if m == 2 else set())


@pytest.mark.parametrize("name, filters, keep", [
    ("genre", ListFilters.parse(genre="Crime|Drama"), lambda m: bool(_genres(m) & {"Crime", "Drama"})),
    ("exclude_genre", ListFilters.parse(exclude_genre="Crime|Comedy"), lambda m: not _genres(m) & {"Crime", "Comedy"}),
    ("year", ListFilters.parse(year="1960-1969"), lambda m: 1960 <= _year(m) <= 1969),
    ("one year", ListFilters.parse(year="1994"), lambda m: _year(m) == 1994),
    ("exclude", ListFilters.parse(exclude="1,5,21,40,424242"), lambda m: m not in (1, 5, 21, 40)),
    ("combined", ListFilters.parse(exclude="22", genre="Drama|Crime", exclude_genre="Crime", year="1970-1999"),
     lambda m: "Drama" in _genres(m) and m != 22 and 1970 <= _year(m) <= 1999),
])
def test_each_filter_alone_and_combined_gives_the_list_computed_by_hand(make_recommender, csv_fixture, name,
                                                                       filters, keep):
    rec = make_recommender()
    for user in (4, 7):
        for min_count in (0, 30):
            top = rec.recommend(user, 1000, min_count, filters=filters)
            assert set(_ids(top)) == _expected(csv_fixture, user, min_count, keep), (name, user, min_count)
    similar, _ = rec.similar_for(None, 1, 1000, 0, filters)
    assert {m.movie_id for m, _ in similar} == {m for m in range(2, 41) if keep(m)}  # all but the movie itself


def test_an_empty_list_names_the_filter_that_emptied_it(make_recommender):
    rec = make_recommender()
    assert "year=1800-1810" in rec.recommend(4, 5, 0, filters=ListFilters.parse(year="1800-1810")).reason
    everything = ",".join(str(m) for m in range(1, 41))
    top = rec.recommend(4, 5, 0, filters=ListFilters.parse(genre="Comedy", exclude=everything))
    assert top.movies == [] and "after exclude" in top.reason
    top = rec.recommend(4, 5, 0, filters=ListFilters.parse(genre="Crime", exclude_genre="Comedy"))
    assert top.movies == [] and "exclude_genre=Comedy" in top.reason


def test_malformed_filters_are_refused_by_name(make_recommender):
    rec = make_recommender()
    with pytest.raises(InputError, match="known genres: Comedy, Crime, Drama"):
        rec.recommend(4, 5, 0, filters=ListFilters.parse(genre="Comedy|Nope"))
    for kwargs, needle in (({"year": "abc"}, "year"), ({"year": "1999-1990"}, "year"),
                           ({"exclude": ",".join(["1"] * 1001)}, "at most 1000"), ({"exclude": "1,x"}, "exclude"),
                           ({"genre": "Comedy||Drama"}, "genre"), ({"exclude": "1,,2"}, "exclude"),
                           ({"exclude": ",1"}, "exclude"), ({"exclude": "1,"}, "exclude"),
                           ({"exclude": "1234567890123456789"}, "exclude"), ({"exclude": "1,-2"}, "exclude"),
                           ({"exclude": "\u0663"}, "exclude"), ({"year": "\u0661\u0669\u0669\u0665"}, "year"),
                           ({"year": "1995x"}, "year"), ({"year": "1990-1999-2000"}, "year")):
        with pytest.raises(InputError, match=needle):
            ListFilters.parse(**kwargs)


def test_exclude_reads_every_id_exactly_up_to_the_cap():
    ids = [(i * 7919) % 200003 for i in range(1000)]
    parsed = ListFilters.parse(exclude=",".join(map(str, ids))).exclude
    assert parsed.tolist() == ids and parsed.dtype == np.int64
    assert ListFilters.parse(exclude=" 7, 123456789012345678 ").exclude.tolist() == [7, 123456789012345678]
    assert ListFilters.parse(exclude="").exclude.tolist() == [] and not ListFilters.parse(exclude="")


def test_the_year_of_a_title(make_recommender):
    rec = make_recommender()
    years = rec.current().catalogue.years
    assert years.dtype.kind == "i" and np.all(years[:4] == [1995, 1994, 1990, 2001])
