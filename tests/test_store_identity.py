"""A model version belongs to the ratings store it was fitted on: met with another store or a restored one,
it is served with every rating that store holds folded in, the trainer fits anew, and it is never uploaded."""

from __future__ import annotations

import sqlite3

from conftest import copy_model

from serving.recommender import Recommender
from storage.sqlite import SQLiteStore
from storage.versions import ModelVersions

PUBLISHED_KEYS = ("files", "format", "version", "params", "scale", "created", "created_at")


def _fit_covering_every_request(model_dir) -> int:
    """What a trainer's fit leaves (without Spark): a new version over the store's requests so far, recorded."""
    versions, store = ModelVersions(model_dir), SQLiteStore(model_dir / "ratings.db")
    version, lease = versions.load()
    lease.release()
    meta = {k: v for k, v in version.meta.items() if k not in PUBLISHED_KEYS}
    seq = store.last_seq
    number = versions.publish(version.models, version.catalogue, version.histories,
                              {**meta, "seq": seq, "store_id": store.store_id})
    store.record_version(number, seq)
    store.close()
    return number


def _posted(model_dir, user: int, requests: int) -> None:
    rec = Recommender(model_dir).start(watch=False)
    for k in range(requests):
        rec.add_ratings(user, [(1 + k, 4.0)])
    rec.close()


def test_a_deleted_ratings_db_is_a_new_store_whose_ratings_all_show(tmp_path, fixture_model):
    model_dir = copy_model(fixture_model, tmp_path / "model")
    _posted(model_dir, 9001, 3)
    _fit_covering_every_request(model_dir)  # version 2 covers requests 1-3
    for name in ("ratings.db", "ratings.db-wal", "ratings.db-shm"):
        (model_dir / name).unlink(missing_ok=True)
    rec = Recommender(model_dir).start(watch=False)
    assert rec.version == 2 and rec.store.last_seq == 0
    rec.add_ratings(9002, [(1, 4.5)])  # request 1 of the new store
    assert [(m.movie_id, r) for m, r in rec.rated(9002)] == [(1, 4.5)]
    assert rec.status()["pending_ratings"] == 1 and rec.status()["trained_on_request"] == 0
    rec.close()


def test_a_store_restored_from_an_earlier_backup_shows_every_rating_after_a_restart(tmp_path, fixture_model):
    model_dir = copy_model(fixture_model, tmp_path / "model")
    _posted(model_dir, 9001, 1)
    backup = tmp_path / "backup.db"
    with sqlite3.connect(model_dir / "ratings.db") as live, sqlite3.connect(backup) as copy:
        live.backup(copy)  # taken at request 1
    _posted(model_dir, 9001, 3)
    _fit_covering_every_request(model_dir)  # covers requests 1-4
    with sqlite3.connect(backup) as copy, sqlite3.connect(model_dir / "ratings.db") as live:
        copy.backup(live)  # the operator restores it
    rec = Recommender(model_dir).start(watch=False)
    rec.add_ratings(9003, [(2, 3.0)])  # request 2 again, of the restored store
    assert [(m.movie_id, r) for m, r in rec.rated(9003)] == [(2, 3.0)]
    rec.close()


def test_a_store_restored_under_a_running_api_process_is_folded_in_from_its_start(tmp_path, fixture_model):
    model_dir = copy_model(fixture_model, tmp_path / "model")
    _fit_covering_every_request(model_dir)
    rec = Recommender(model_dir).start(watch=False)
    rec.add_ratings(9001, [(1, 4.0)])
    backup = tmp_path / "backup.db"
    with sqlite3.connect(model_dir / "ratings.db") as live, sqlite3.connect(backup) as copy:
        live.backup(copy)  # at request 1
    rec.add_ratings(9001, [(2, 4.0)])
    rec.add_ratings(9001, [(3, 4.0)])
    with sqlite3.connect(backup) as copy, sqlite3.connect(model_dir / "ratings.db") as live:
        copy.backup(live)  # back to request 1, while the process serves
    rec.add_ratings(9004, [(5, 2.5)])  # request 2 again
    assert [(m.movie_id, r) for m, r in rec.rated(9004)] == [(5, 2.5)]
    assert [m.movie_id for m, _ in rec.rated(9001)] == [1]  # what the restore took away is gone
    rec.close()


def test_the_trainer_refits_a_version_of_another_store_and_never_uploads_it(tmp_path, make_engine, csv_fixture,
                                                                             postgres):
    """A folder trained on SQLite, then started with a PostgreSQL store: the version does not match (a fit is
    due) and share_versions leaves the database without it."""
    from storage.postgres import PostgresStore
    from storage.shipping import SharedVersions

    model_dir = tmp_path / "model"
    same = make_engine(csv_fixture.path, model_dir)
    assert same.matches(same.current_meta())  # the fixture's own store: nothing to fit
    same.close()
    store = PostgresStore(postgres.create_database())
    moved = make_engine(csv_fixture.path, model_dir, store=store)
    assert not moved.matches(moved.current_meta())
    moved.share_versions()
    assert SharedVersions(store).newest() == 0 and SharedVersions(store).current() is None
