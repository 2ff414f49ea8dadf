"""What every ratings store promises (storage/store.py), checked on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing
from collections import Counter

import pytest

from storage.backends import open_store
from storage.store import StoreError
from storage.tokens import UserTokens


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    """Where a fresh store lives: (the --store value, the model folder); open it with ``open_store(*location)``."""
    if request.param == "sqlite":
        return None, tmp_path
    return request.getfixturevalue("postgres").create_database(), tmp_path


@pytest.fixture
def store(location):
    store = open_store(*location)
    yield store
    store.close()


def _posted(store, user: int) -> list[tuple[int, float]]:
    """The user's newest rating of each movie, by movie id, as a reader folding in everything sees it."""
    return sorted(store.changes(0)[1].get(user, {}).items())


def _pairs(store):
    return [(e.seq, e.user, e.ratings) for e in store.entries()]


def test_requests_are_numbered_in_order_and_read_back_newest_rating_first(store, location):
    store.append(1, [(10, 4.0), (11, 2.0)])
    store.append(2, [(10, 3.5)])
    store.append(1, [(10, 1.0)])
    assert store.last_seq == 3
    assert _posted(store, 1) == [(10, 1.0), (11, 2.0)] and _posted(store, 3) == []
    assert list(store.latest(2)) == [(1, [(10, 4.0), (11, 2.0)], 1), (2, [(10, 3.5)], 2)]
    assert list(store.latest(3))[0] == (1, [(10, 1.0), (11, 2.0)], 3)
    assert store.ratings_after(1) == 2 and store.ratings_after(3) == 0
    assert store.changes(0) == (3, {1: {10: 1.0, 11: 2.0}, 2: {10: 3.5}})
    assert store.changes(2) == (3, {1: {10: 1.0}}) and store.changes(3) == (3, {})
    assert store.first_time_after(3) is None and store.first_time_after(2) == store.entries()[-1].time
    store_id = store.store_id
    store.close()
    reopened = open_store(*location)
    assert reopened.last_seq == 3 and reopened.store_id == store_id
    assert _pairs(reopened)[0] == (1, 1, ((10, 4.0), (11, 2.0)))
    assert reopened.append(4, [(1, 0.5)]).seq == 4
    reopened.close()


def test_compaction_drops_only_replaced_ratings_the_model_was_trained_past(store):
    store.append(1, [(10, 4.0), (11, 2.0)])
    store.append(1, [(10, 1.0)])  # replaces (1, 10)
    store.append(1, [(11, 5.0)])  # replaces (1, 11), after the trained request
    assert store.compact(2) == 1  # only (1, 10) of request 1: request 3 is newer than the model
    assert _pairs(store) == [(1, 1, ((11, 2.0),)), (2, 1, ((10, 1.0),)), (3, 1, ((11, 5.0),))]
    assert _posted(store, 1) == [(10, 1.0), (11, 5.0)]
    assert store.compact(3) == 1 and _posted(store, 1) == [(10, 1.0), (11, 5.0)]


def _fail_inserts_of_movie(store, movie: int) -> None:
    """Fault injection: the database refuses any rating of ``movie`` (as a full disk would, mid-transaction)."""
    with store.writing() as db:
        if store.kind == "sqlite":
            db.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON ratings WHEN NEW.movie = {movie} "
                       "BEGIN SELECT RAISE(ABORT, 'disk full (injected)'); END")
        else:
            db.execute("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                       "RAISE EXCEPTION 'disk full (injected)'; END $$ LANGUAGE plpgsql")
            db.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON ratings FOR EACH ROW WHEN (NEW.movie = {movie}) "
                       "EXECUTE FUNCTION refuse()")


def test_a_failed_request_stores_nothing_takes_no_number_and_the_store_goes_on(store):
    store.append(1, [(10, 4.0)])
    _fail_inserts_of_movie(store, 666)
    with pytest.raises(StoreError, match="disk full"):
        store.append(2, [(20, 3.0), (21, 1.0), (666, 2.0)])  # the third row fails after two went in
    assert store.last_seq == 1 and _pairs(store) == [(1, 1, ((10, 4.0),))]
    assert store.append(3, [(30, 2.5)]).seq == 2  # no gap, nothing half-stored


def test_shared_settings_new_users_and_tokens(store):
    assert store.trainer_status() is None and store.retrain_requested() is None
    store.set_trainer_status({"state": "idle"})
    asked = store.request_retrain()
    assert store.trainer_status() == {"state": "idle"} and store.retrain_requested() == asked
    store.append(5, [(1, 4.0)])
    assert store.new_user(5, lambda u: False) == 6  # 5 has ratings
    assert store.new_user(1, lambda u: u == 7) == 8  # above every id handed out; 7 taken elsewhere
    tokens = UserTokens(store)
    first = tokens.issue(3)
    assert tokens.owner(first) == 3
    second = tokens.issue(3)  # issuing again replaces
    assert tokens.owner(first) is None and tokens.owner(second) == 3
    assert tokens.revoke(3) and not tokens.revoke(3) and tokens.owner(second) is None


def _append_many(location, user: int, count: int, ready, go) -> None:
    store = open_store(*location)
    ready.set()
    go.wait(30)
    for k in range(count):
        store.append(user, [(k % 7, 0.5 + k % 10 / 2)])
    store.close()


def test_processes_appending_at_once_get_distinct_request_numbers_in_commit_order(location):
    """Request numbers come from the database inside the write transaction, not from a process's memory."""
    open_store(*location).close()
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    readies = [ctx.Event() for _ in range(3)]
    procs = [ctx.Process(target=_append_many, args=(location, user, 100, ready, go))
             for user, ready in zip((1, 2, 3), readies)]
    for proc in procs:
        proc.start()
    for ready in readies:
        assert ready.wait(60)
    go.set()  # all write at once
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    store = open_store(*location)
    entries = store.entries()
    assert [e.seq for e in entries] == list(range(1, 301)) and store.last_seq == 300
    assert Counter(e.user for e in entries) == {1: 100, 2: 100, 3: 100}
    # Each user's requests in the order that user made them: the last one, (99 % 7, 5.0), wins.
    assert all(store.changes(0)[1][u][99 % 7] == 0.5 + 99 % 10 / 2 for u in (1, 2, 3))
    store.close()


def test_an_unknown_store_url_is_refused_in_one_line(tmp_path):
    with pytest.raises(StoreError, match="not a store this service knows"):
        open_store("mysql://somewhere/db", tmp_path)


def test_one_trainer_per_database_store_through_a_restart(postgres):
    """The trainer lock of a PostgreSQL store (an advisory lock: the server drops it when it restarts) is
    taken again by its holder after a restart, unless another trainer took it first."""
    from storage.postgres import PostgresStore

    store = PostgresStore(postgres.create_database())
    first = store.trainer_lock()
    assert first is not None and store.trainer_lock() is None and first.held()
    postgres.stop()
    assert first.held()  # nobody can take it while the server is away
    postgres.start()
    assert first.held() and store.trainer_lock() is None  # taken again on the first check
    postgres.stop()
    postgres.start()
    second = store.trainer_lock()  # another trainer got there first
    assert second is not None and not first.held()
    second.release()
    first.release()
    store.close()
