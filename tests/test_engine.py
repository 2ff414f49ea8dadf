"""The engine (the trainer's side): what a fit sees, what it publishes, and when a version is reused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import FAST, copy_model, quick
from fixtures import write_dataset

from model import Scale
from serving.errors import InputError
from storage.store import StoreError


def test_a_fit_includes_every_posted_rating_and_publishes_a_new_version(make_engine, make_recommender, csv_fixture):
    engine = make_engine(csv_fixture.path)
    rec = make_recommender(engine.model_dir)
    posted = [(m, 5.0) for m in csv_fixture.dramas[:6]] + [(m, 0.5) for m in csv_fixture.comedies[:6]]
    rec.add_ratings(6000, posted)
    rerated = next(m for u, m, r in csv_fixture.ratings if u == 1 and r != 0.5)
    rec.add_ratings(1, [(rerated, 0.5)])  # a re-rating of a dataset rating: replaces it, adds nothing
    assert engine.fit_and_publish() == 2
    assert rec.refresh() and rec.version == 2
    served = rec.current()
    assert served.seq == 2 and served.posted == {}  # nothing left to fold in: the version saw both requests
    models = served.snapshot.models
    assert models.rating.user_row(6000) is not None and models.ranking.user_row(6000) is not None
    assert set(s.movie.movie_id for s in rec.recommend(6000, 5, min_count=0).movies) <= set(csv_fixture.dramas)
    assert rec.predict(1, rerated).user_rating == 0.5
    assert rec.status()["pending_ratings"] == 0
    meta = json.loads((engine.versions.path(2) / "version.json").read_text())
    assert meta["seq"] == 2 and meta["n_ratings"] == len(csv_fixture.ratings) + len(posted)


@pytest.mark.parametrize("when", ["before", "after", "again"])
def test_a_forget_while_a_fit_reads_the_posted_ratings_still_leaves_the_user_out(make_engine, csv_fixture,
                                                                                 monkeypatch, when):
    """A user forgotten between the fit's read of who is forgotten and its read of the posted ratings (either
    side of the latter) has neither their dataset ratings nor their posted ones in what the fit sees."""
    from storage.people import People

    engine = make_engine(csv_fixture.path)
    user = 1
    if when == "again":  # forgotten before, posted afresh, and forgotten once more between the reads
        People(engine.store).forget(user)
    engine.store.append(user, [(m, 5.0) for m in csv_fixture.dramas[:3]])
    read = engine.store.latest
    forgot = []

    def latest(upto):
        if not forgot and when == "before":
            forgot.append(People(engine.store).forget(user))
        rows = list(read(upto))
        if not forgot:
            forgot.append(People(engine.store).forget(user))
        return iter(rows)

    monkeypatch.setattr(engine.store, "latest", latest)
    histories, changed = engine.histories(engine.store.last_seq)
    assert forgot and histories.of(user) is None and user in changed  # "again": no afresh ratings either
    assert histories.of(2) is not None  # the others stay


def test_the_engines_cached_ratings_survive_fits_and_the_source_is_read_once(make_engine, csv_fixture, tmp_path,
                                                                            caplog):
    import shutil

    dataset = tmp_path / "with-a-bad-line"
    shutil.copytree(csv_fixture.path, dataset)
    with open(dataset / "ratings.csv", "a") as fh:
        fh.write("1,2,not-a-rating,0\n")
    with caplog.at_level("WARNING"):
        engine = make_engine(dataset, params=quick())
    assert engine.malformed.value == 1
    line = len(csv_fixture.ratings) + 2  # after the header and every rating
    assert f"skipped 1 malformed line(s) in {dataset}/ratings.csv; the first is {dataset}/ratings.csv:{line}: " \
        "'1,2,not-a-rating,0'" in caplog.text
    for round_ in range(2):
        engine.store.append(7100 + round_, [(m, 4.5) for m in csv_fixture.comedies[:4]])
        assert engine.fit_and_publish() == 1 + round_
    assert engine.base_ratings.is_cached  # training did not drop the engine's cache
    assert engine.malformed.value == 1  # so the source was parsed once, not once per fit


def test_a_published_version_is_reused_only_for_the_same_data_parameters_and_scale(make_engine, csv_fixture):
    engine = make_engine(csv_fixture.path)
    meta = engine.current_meta()
    assert engine.matches(meta)
    assert not make_engine(csv_fixture.path, engine.model_dir, params=quick(rating_rank=3)).matches(meta)
    other_ranking = replace(FAST, ranking=replace(FAST.ranking, alpha=1.0))
    assert not make_engine(csv_fixture.path, engine.model_dir, params=other_ranking).matches(meta)
    assert not make_engine(csv_fixture.path, engine.model_dir, scale=Scale(1.0, 5.0, 0.5)).matches(meta)
    assert not engine.matches({**meta, "dataset_fingerprint": "other content"})  # the dataset's files changed
    assert not engine.matches(None)


def test_a_damaged_version_is_refused_and_the_previous_one_stays(make_engine, make_recommender, csv_fixture):
    engine = make_engine(csv_fixture.path)
    rec = make_recommender(engine.model_dir)
    assert engine.fit_and_publish() == 2
    arrays = engine.versions.path(2) / "model-movie_factors.npy"
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    assert not rec.refresh() and rec.version == 1  # the recommender keeps the version it had
    assert "checksum" in rec.load_error
    assert rec.recommend(1, 3, min_count=0).version == 1
    loads = []
    real_load = rec.versions.load
    rec.versions.load = lambda *a: loads.append(a) or real_load(*a)
    assert not rec.refresh() and loads == []  # not read again while the pointer names it (no checksums each second)
    engine.fit_and_publish()
    assert rec.refresh() and rec.version == 3 and loads == [(3,)]  # the next version is read


def test_whole_star_dataset_uses_a_whole_star_scale(sc, make_engine, make_recommender, tmp_path):
    fx = write_dataset(tmp_path / "ml-100k", "100k", n_users=20, n_movies=20)
    engine = make_engine(fx.path)
    assert (engine.scale.low, engine.scale.high, engine.scale.step) == (1.0, 5.0, 1.0)
    engine.fit_and_publish()
    rec = make_recommender(engine.model_dir)
    with pytest.raises(InputError, match="not on the scale"):
        rec.add_ratings(1, [(1, 4.5)])
    assert 1.0 <= rec.predict(99, 1).predicted_rating <= 5.0


def test_a_given_scale_overrides_the_inferred_one(make_engine, make_recommender, csv_fixture, tmp_path):
    engine = make_engine(csv_fixture.path, tmp_path / "m", scale=Scale(1.0, 5.0, 1.0))
    engine.fit_and_publish()
    rec = make_recommender(engine.model_dir)
    with pytest.raises(InputError, match="1 to 5 in steps of 1"):
        rec.add_ratings(1, [(1, 4.5)])
    assert all(1.0 <= s.predicted_rating <= 5.0 for s in rec.recommend(1, 40, min_count=0).movies)


def _series(rec, words: str) -> list[int]:
    return [m.movie_id for m in rec.search(words, 50)]


@pytest.fixture(scope="module")
def real(real_model, tmp_path_factory):
    from serving.recommender import Recommender

    rec = Recommender(copy_model(real_model, tmp_path_factory.mktemp("real") / "model")).start(watch=False)
    yield rec
    rec.close()


def test_a_fan_of_two_series_gets_more_of_them_at_once(real):
    """Five Star Wars / Lord of the Rings ratings fold in before any fit and bring the series' other films."""
    star_wars = [m for m in _series(real, "star wars: episode") if real.movie(m)[0].ratings_count]
    rings = _series(real, "lord of the rings: the")
    posted = [(m, 5.0) for m in star_wars[:3] + rings[:2]]
    assert len(posted) == 5
    real.add_ratings(900_001, posted)
    top = real.recommend(900_001, 10)
    assert top.fallback is None and top.version == 1
    ids = {s.movie.movie_id for s in top.movies}
    assert not ids & {m for m, _ in posted}
    assert ids & (set(star_wars[3:]) | set(rings[2:])), [s.movie.title for s in top.movies]


def test_top_10_has_no_ties_from_clipping(real):
    """Ranking uses unclipped scores: the order is strict even where the shown stars are clipped at 5."""
    clipped_somewhere = False
    for user in (154, 251, 53):
        movies = real.recommend(user, 10).movies
        scores = [s.ranking_score for s in movies]
        assert len(movies) == 10 and all(a > b for a, b in zip(scores, scores[1:]))
        clipped_somewhere |= sum(s.predicted_rating == 5.0 for s in movies) >= 2
    assert clipped_somewhere  # these users rate generously: several shown predictions hit the top of the scale


def test_similar_movies_are_the_neighbourhood_first_then_the_ranking_models_cosine(real):
    """Toy Story 2 is in Toy Story's first three (the ranking model's cosine alone put Independence Day,
    Aladdin, Forrest Gump, Star Wars and The Lion King first); the rest fill by cosine; min_count holds."""
    served = real.current()
    snapshot, toy_story = served.snapshot, served.catalogue.row(1)
    similar = real.similar(1, 10)
    assert len(similar) == 10 and all(m.ratings_count >= 25 for m, _ in similar)
    assert 3114 in [m.movie_id for m, _ in similar[:3]]  # Toy Story 2
    rows = [served.catalogue.row(m.movie_id) for m, _ in similar]
    by_neighbourhood = dict(zip(snapshot.neighbours[toy_story].tolist(), snapshot.similarity[toy_story].tolist()))
    expected = [by_neighbourhood.get(r, float(snapshot.rank_unit[r] @ snapshot.rank_unit[toy_story])) for r in rows]
    assert [s for _, s in similar] == pytest.approx(expected, abs=1e-4)
    assert all(m.ratings_count >= 3 for m, _ in real.similar(1, 20, min_count=3))
    popular = real.similar(1, 300, min_count=200)  # fewer neighbours pass: the list is filled by cosine
    assert all(m.ratings_count >= 200 for m, _ in popular) and len({m.movie_id for m, _ in popular}) == len(popular)


def test_the_published_version_carries_what_an_api_process_needs(real_model, real_dataset):
    """An API process needs no dataset: the version holds the catalogue and every user's ratings."""
    from storage.versions import ModelVersions

    version, lease = ModelVersions(Path(real_model)).load()
    lease.release()
    assert len(version.catalogue) == 9742 and len(version.histories) == 100_836
    assert version.catalogue.titles[version.catalogue.row(11)] == "American President, The (1995)"
    assert version.meta["dataset"] == str(real_dataset) and version.meta["seq"] == 0


def test_a_compaction_that_fails_after_a_fit_leaves_the_new_version_in_service(make_engine, csv_fixture,
                                                                               monkeypatch, caplog):
    """Disk full after a fit: the version is out, so the failure is one warning and the next fit compacts."""
    from storage.store import StoreError

    engine = make_engine(csv_fixture.path)
    engine.store.append(6700, [(1, 4.0)])
    engine.store.append(6700, [(1, 2.0)])  # replaces the first: compaction has a row to delete

    def full(upto):  # what the store raises for any database error
        raise StoreError("database or disk is full")

    monkeypatch.setattr(engine.store, "compact", full)
    with caplog.at_level("INFO"):
        assert engine.fit_and_publish() == 2
    assert engine.versions.current() == 2 and engine.current_meta()["seq"] == 2
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "engine"]
    assert messages == [("INFO", "model version 2 published (ratings up to request 2, fit in "
                         f"{engine.current_meta()['fit_seconds']['total']:.1f} s)"),
                        ("WARNING", "ratings store: compaction failed (database or disk is full); retried after "
                         "the next fit")]
    monkeypatch.undo()
    assert engine.store.compact(2) == 1


def test_a_model_folder_belongs_to_one_dataset(make_engine, csv_fixture, tmp_path):
    """Default folders are named after the dataset's folder: another dataset of the same name is refused, while a
    copy of the same files elsewhere, or new content at the same path, is the same dataset."""
    import shutil

    from datasets.movielens import DatasetError

    folder = tmp_path / "models" / "ml-fixture"
    make_engine(csv_fixture.path, folder).close()
    other = write_dataset(tmp_path / "elsewhere" / "ml-fixture", "csv", n_users=20, n_movies=40, seed=5)
    with pytest.raises(DatasetError, match=f"holds the ratings and models of {csv_fixture.path}, not of {other.path}: "
                                           "give this dataset a --model-dir of its own"):
        make_engine(other.path, folder)
    copy = shutil.copytree(csv_fixture.path, tmp_path / "copy" / "ml-fixture")
    make_engine(copy, folder).close()  # the same files: the same dataset, now known by its new place
    with open(copy / "ratings.csv", "a") as fh:
        fh.write("1,2,4.5,9\n")
    make_engine(copy, folder).close()  # new content at the same place: still the same dataset


def test_a_version_the_database_store_could_not_take_goes_there_once_it_answers(make_engine, csv_fixture, postgres,
                                                                                  caplog):
    """A fit published while the PostgreSQL store was down is not lost: the trainer's next poll uploads it
    (no second fit), and API hosts then get it.  The folder's first version, fitted on its SQLite store,
    never goes there (issue 25 item 1)."""
    from storage.postgres import PostgresStore
    from storage.shipping import SharedVersions
    from storage.store import StoreError
    from trainer.loop import RetrainPolicy, Trainer

    store = PostgresStore(postgres.create_database())
    engine = make_engine(csv_fixture.path, store=store)
    engine.share_versions()  # the folder's version 1 was fitted on another store: it stays out of this one
    shared = SharedVersions(store)
    assert shared.current() is None
    upload = engine.shared.upload

    def down(*args, **kwargs):
        raise StoreError("the PostgreSQL store is not answering: Connection refused")

    engine.shared.upload = down
    with caplog.at_level("WARNING"):
        assert engine.fit_and_publish() == 2
    assert engine.versions.current() == 2 and shared.current() is None
    assert "model version 2 is not in the store yet" in caplog.text
    engine.shared.upload = upload
    Trainer(engine, RetrainPolicy(None, None, 0))._due()  # the trainer's next poll
    assert shared.current() == 2 and shared.newest() == 2


class _FlakyShared:
    """A stand-in for the PostgreSQL store's versions table that can be down (no server, no Spark needed)."""

    def __init__(self, current: int, newest: int):
        self._current, self._newest, self.down, self.uploaded = current, newest, False, []

    def _check(self) -> None:
        if self.down:
            raise StoreError("the PostgreSQL store is not answering: Connection refused")

    def current(self) -> int:
        self._check()
        return self._current

    def newest(self) -> int:
        self._check()
        return self._newest

    def upload(self, versions, number: int, keep: int, serve: bool = True) -> None:
        self._check()
        self.uploaded.append(number)
        self._current, self._newest = number, max(self._newest, number)


def test_a_fit_published_while_the_database_is_down_is_kept_and_uploaded_later(tmp_path, monkeypatch, caplog):
    """Issue 25, item 12: the store's newest number was read before publish(), so a database that was down
    then threw the whole fit away; now the fit is published here, numbered above the newest number the store
    last named, and uploaded at the trainer's next poll.  A stand-in engine: no Spark."""
    import threading

    import numpy as np
    from test_versions import CATALOGUE, _models

    import engine as engine_module
    from storage.backends import open_store
    from storage.versions import ModelVersions

    engine = object.__new__(engine_module.RecommendationEngine)
    engine.sc = type("NoSpark", (), {"setJobGroup": lambda *a, **k: None})()
    engine.model_dir, engine.dataset, engine.fingerprint, engine.tune_budget = tmp_path, "fixture", "f", None
    engine.store, engine.versions = open_store(None, tmp_path), ModelVersions(tmp_path)
    engine.catalogue, engine.params, engine.scale, engine.base_ratings = CATALOGUE, None, None, None
    engine.params_source = "given"
    engine._base = (np.array([1, 2], dtype=np.int64), np.array([0, 1], dtype=np.int32), np.array([4.0, 3.0]))
    engine._stopping, engine.job_group, engine._newest_shared = threading.Event(), "g", 0
    engine._unrecorded = None
    engine.shared = shared = _FlakyShared(current=1, newest=6)  # the store's numbers run above this folder's

    def fit_models(*args, **kwargs):
        models = _models(3)
        models.meta = {"n_ratings": 2, "fit_seconds": {"total": 1.0}}
        return models

    monkeypatch.setattr(engine_module, "fit_models", fit_models)
    try:
        engine.versions.publish(_models(1), CATALOGUE, engine.histories(0)[0], {"seq": 0})
        engine.share_versions()  # a poll while the store answers: its newest is 6
        shared.down = True
        with caplog.at_level("WARNING"):
            assert engine.fit_and_publish() == 7
        assert engine.versions.current() == 7 and "goes to the store once it answers" in caplog.text
        shared.down = False
        engine.share_versions()  # the trainer's next poll
        assert shared.uploaded == [7] and shared.current() == 7
    finally:
        engine.store.close()
