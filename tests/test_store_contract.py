"""What every ratings store promises (storage/store.py), checked on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor

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
    return sorted(store.changes(0)[1].ratings().get(user, {}).items())


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
    upto, changes = store.changes(0)
    assert (upto, changes.ratings()) == (3, {1: {10: 1.0, 11: 2.0}, 2: {10: 3.5}})
    upto, changes = store.changes(2)
    assert (upto, changes.ratings()) == (3, {1: {10: 1.0}}) and store.changes(3)[1].ratings() == {}
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
    """Four threads of one process append ``count`` requests each, users ``user * 10 + thread``."""
    store = open_store(*location)
    ready.set()
    go.wait(30)

    def one_thread(u: int) -> None:
        for k in range(count):
            store.append(u, [(k % 7, 0.5 + k % 10 / 2)])

    with ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(one_thread, user * 10 + t) for t in range(4)]:
            done.result()
    store.close()


def test_processes_appending_at_once_get_distinct_request_numbers_in_commit_order(location):
    """Request numbers come from the database inside the write transaction, not from a process's memory;
    each process's threads share group commits."""
    open_store(*location).close()
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    readies = [ctx.Event() for _ in range(3)]
    procs = [ctx.Process(target=_append_many, args=(location, user, 50, ready, go))
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
    users = [u * 10 + t for u in (1, 2, 3) for t in range(4)]
    assert [e.seq for e in entries] == list(range(1, 601)) and store.last_seq == 600
    assert Counter(e.user for e in entries) == dict.fromkeys(users, 50)
    # Each user's requests in the order that user made them: the last one, (49 % 7, 5.0), wins.
    assert all(store.changes(0)[1].ratings()[u][49 % 7] == 0.5 + 49 % 10 / 2 for u in users)
    store.close()


def _line_up(store, pool: ThreadPoolExecutor, requests: list[tuple]) -> list[Future]:
    """Submit ``store.append(*args)`` for each request on threads while a first request holds the commit, so
    that they wait in the queue in this order and form one group; the holder is released, then its group
    (request 1 alone) and theirs commit.  Returns their futures (the holder's is awaited here)."""
    holding, release = threading.Event(), threading.Event()

    def hold(db, seq) -> None:
        holding.set()
        assert release.wait(30)

    first = pool.submit(store.append, 1, [(1, 1.0)], None, None, hold)
    assert holding.wait(30)
    futures = []
    for k, args in enumerate(requests, 1):
        futures.append(pool.submit(store.append, *args))
        assert store.group.wait_queued(k, 30)
    release.set()
    assert first.result(30).seq == 1
    return futures


def _outcome(future: Future):
    try:
        return future.result(30)
    except BaseException as exc:  # noqa: BLE001 - the outcome is what the test checks
        return exc


def test_requests_at_once_share_one_commit_and_are_acknowledged_only_after_it(store):
    written, let_go = threading.Event(), threading.Event()

    def hold_last(db, seq) -> None:  # the group's last request: every other one is written, none committed
        written.set()
        assert let_go.wait(30)

    with ThreadPoolExecutor(10) as pool:
        groups = store.group.groups
        futures = _line_up(store, pool, [(2 + k, [(10 + k, 3.0)]) for k in range(7)]
                           + [(9, [(17, 3.0)], None, None, hold_last)])
        assert written.wait(30)
        assert not any(f.done() for f in futures)  # seven are written, and none is acknowledged before the commit
        let_go.set()
        entries = [f.result(30) for f in futures]
    assert [(e.seq, e.user) for e in entries] == [(k, k) for k in range(2, 10)]
    assert store.group.groups == groups + 2  # the holder's, then one for the eight
    assert [(e.seq, e.user, e.ratings) for e in store.entries()] == \
        [(1, 1, ((1, 1.0),))] + [(k, k, ((k + 8, 3.0),)) for k in range(2, 10)]


def test_a_request_that_fails_in_a_group_fails_alone_and_takes_no_number(store):
    from storage.store import Once, Replayed

    _fail_inserts_of_movie(store, 666)
    once = Once("ratings:3", "k-1", "fp")

    def broken(db, seq) -> None:
        raise ValueError("a bug in what goes along (injected)")

    with ThreadPoolExecutor(8) as pool:
        futures = _line_up(store, pool, [
            (2, [(20, 4.0)]),
            (3, [(30, 3.0)], once, {"accepted": 1}),
            (3, [(30, 3.0)], once, {"accepted": 2}),  # the same key in the same group: the first answer
            (4, [(40, 2.0), (666, 2.0)]),  # its second row is refused
            (5, [(50, 1.0)], None, None, broken),
            (6, [(60, 5.0)]),
        ])
        a, b, again, refused, bug, f = (_outcome(x) for x in futures)
    assert (a.seq, b.seq, f.seq) == (2, 3, 4)  # no number taken by the three that failed
    assert isinstance(again, Replayed) and again.answer == {"accepted": 1} and again.matches
    assert isinstance(refused, StoreError) and "disk full (injected)" in str(refused)
    assert isinstance(bug, ValueError)
    assert store.last_seq == 4 and [(e.seq, e.user) for e in store.entries()] == [(1, 1), (2, 2), (3, 3), (4, 6)]
    assert store.append(5, [(50, 1.0)]).seq == 5  # the store goes on


def test_a_request_that_ends_the_whole_transaction_fails_its_group_with_that_reason(tmp_path):
    """SQLite rolls the whole transaction back on some errors (a full disk, an I/O error; here a trigger's
    RAISE(ROLLBACK)): no savepoint is left to return to, so every request of the group fails, with the
    database's reason, and nothing of any is stored."""
    store = open_store(None, tmp_path)
    with store.writing() as db:
        db.execute("CREATE TRIGGER gone BEFORE INSERT ON ratings WHEN NEW.movie = 668 "
                   "BEGIN SELECT RAISE(ROLLBACK, 'transaction rolled back (injected)'); END")
    with ThreadPoolExecutor(6) as pool:
        futures = _line_up(store, pool, [(2, [(20, 4.0)]), (3, [(668, 3.0)]), (4, [(40, 2.0)])])
        outcomes = [_outcome(x) for x in futures]
    assert all(isinstance(x, StoreError) and "transaction rolled back (injected)" in str(x) for x in outcomes)
    assert store.last_seq == 1 and [e.user for e in store.entries()] == [1]
    assert store.append(4, [(40, 2.0)]).seq == 2
    store.close()


def test_a_leader_stopped_mid_group_refuses_the_others_and_stores_none(store):
    """A BaseException in the thread committing a group (the process stopping) is that thread's own; every
    other request of the group is refused with a StoreError, and nothing of the group is stored."""

    class Stop(BaseException):
        pass

    def stop(db, seq) -> None:
        raise Stop()

    with ThreadPoolExecutor(6) as pool:
        futures = _line_up(store, pool, [(2, [(20, 4.0)]), (3, [(30, 3.0)], None, None, stop), (4, [(40, 2.0)])])
        outcomes = [_outcome(x) for x in futures]
    stopped = [x for x in outcomes if isinstance(x, Stop)]
    refused = [x for x in outcomes if isinstance(x, StoreError) and "stopping" in str(x)]
    assert len(stopped) == 1 and len(refused) == 2, outcomes  # whichever thread led the group raised it
    assert store.last_seq == 1 and [e.user for e in store.entries()] == [1]
    assert store.append(5, [(50, 1.0)]).seq == 2


def _fail_commits_with_movie(store, movie: int) -> None:
    """Fault injection: a transaction that stored a rating of ``movie`` fails at its COMMIT (a deferred
    constraint), after every statement of it went through."""
    with store.writing() as db:
        if store.kind == "sqlite":
            db.execute("CREATE TABLE nowhere (id INTEGER PRIMARY KEY)")
            db.execute("CREATE TABLE poisoned (movie INTEGER REFERENCES nowhere (id) DEFERRABLE INITIALLY DEFERRED)")
            db.execute(f"CREATE TRIGGER poison AFTER INSERT ON ratings WHEN NEW.movie = {movie} "
                       "BEGIN INSERT INTO poisoned VALUES (NEW.movie); END")
        else:
            db.execute("CREATE FUNCTION refuse_commit() RETURNS trigger AS $$ BEGIN "
                       "RAISE EXCEPTION 'commit refused (injected)'; END $$ LANGUAGE plpgsql")
            db.execute(f"CREATE CONSTRAINT TRIGGER poison AFTER INSERT ON ratings DEFERRABLE INITIALLY DEFERRED "
                       f"FOR EACH ROW WHEN (NEW.movie = {movie}) EXECUTE FUNCTION refuse_commit()")
    if store.kind == "sqlite":
        store._db.execute("PRAGMA foreign_keys=ON")  # a connection's setting, outside any transaction


def test_a_group_whose_commit_fails_acknowledges_and_stores_none_of_it(store):
    from storage.store import Once

    _fail_commits_with_movie(store, 667)
    once = Once("ratings:4", "k-1", "fp")
    with ThreadPoolExecutor(6) as pool:
        futures = _line_up(store, pool, [(2, [(20, 4.0)]), (3, [(667, 3.0)]), (4, [(40, 2.0)], once, {})])
        outcomes = [_outcome(x) for x in futures]
    assert all(isinstance(x, StoreError) for x in outcomes), outcomes
    assert store.last_seq == 1 and [e.user for e in store.entries()] == [1]
    assert store.append(4, [(40, 2.0)], once, {}).seq == 2  # its key was not kept either: stored now


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


def test_an_idempotency_key_stores_a_request_once_and_gives_its_first_answer_again(store):
    """A retried write (the client never saw the answer) stores nothing the second time, takes no request
    number, and gets the first answer; the same key with another request is refused; keys are per scope,
    kept 24 hours, then pruned."""
    from storage.store import Once, Replayed

    once = Once("ratings:1", "k-1", "fp-a")
    store.append(1, [(10, 4.0)], once, {"accepted": 1, "model_version": 7})
    with pytest.raises(Replayed) as again:
        store.append(1, [(10, 4.0)], once, {"accepted": 1, "model_version": 8})
    assert again.value.answer == {"accepted": 1, "model_version": 7} and again.value.matches
    with pytest.raises(Replayed) as other:
        store.append(1, [(11, 2.0)], Once("ratings:1", "k-1", "fp-b"), {})
    assert not other.value.matches
    assert store.last_seq == 1 and _pairs(store) == [(1, 1, ((10, 4.0),))]
    assert store.append(2, [(10, 1.0)], Once("ratings:2", "k-1", "fp-a"), {}).seq == 2  # another user's key
    users = Once("users", "new-1", "u")
    handed = store.new_user(1, lambda u: False, users)
    with pytest.raises(Replayed) as same_user:
        store.new_user(1, lambda u: False, users)
    assert same_user.value.answer == {"user": handed} and store.new_user(1, lambda u: False) == handed + 1
    with store.writing() as db:  # a day later
        db.execute("UPDATE idempotency SET time = time - ?", (24 * 3600 + 1,))
    assert store.append(1, [(10, 4.0)], once, {}).seq == 3  # the old key no longer replays, and is pruned
    with store.reading() as db:
        assert db.execute("SELECT count(*) FROM idempotency").fetchone()[0] == 1


def test_a_version_counts_as_this_stores_only_once_recorded_with_the_same_request(store):
    """What lets an API process trust a version's request number: the store it was fitted on recorded it."""
    meta = {"version": 4, "seq": 3, "store_id": store.store_id}
    assert store.covered(meta) is None  # not recorded: another store's, or from before a restore
    store.record_version(4, 3)
    assert store.covered(meta) == 3
    assert store.covered({**meta, "seq": 2}) is None and store.covered({**meta, "store_id": "other"}) is None
    for number in range(5, 200):
        store.record_version(number, number)
    assert store.covered({"version": 199, "seq": 199, "store_id": store.store_id}) == 199
    assert store.covered(meta) is None  # the oldest records are dropped (far more than any folder keeps)


def test_user_tokens_are_checked_from_memory_and_follow_every_issue_and_revoke(location):
    """Tokens issued or revoked through one process's store count at once in another's, and a process checks
    the tokens it knows while the store does not answer."""
    from contextlib import contextmanager

    a, b = open_store(*location), open_store(*location)
    mine, theirs = UserTokens(a), UserTokens(b)
    token = mine.issue(3)
    assert theirs.owner(token) == 3
    mine.revoke(3)
    assert theirs.owner(token) is None
    token = mine.issue(4)
    assert theirs.owner(token) == 4

    @contextmanager
    def down():
        raise StoreError("not answering (injected)")
        yield

    b.reading = down
    assert theirs.owner(token) == 4 and theirs.owner("u1.not-a-token") is None
    a.reading = down  # reads fail, the revoke's write goes through: this process knows its revoke at once
    mine.revoke(4)
    assert mine.owner(token) is None
    del a.reading
    a.close()
    del b.reading
    b.close()


def test_a_busy_postgresql_pool_fails_one_request_and_is_no_outage(postgres, monkeypatch):
    """No free connection within the wait (every one held) fails that request alone, with StoreBusy; the
    next request goes through, and the store is not marked down."""
    import threading

    from storage.postgres import PostgresStore
    from storage.store import StoreBusy

    monkeypatch.setattr("storage.postgres.WAIT_TIMEOUT", 0.2)  # the wait this request gives up after
    store = PostgresStore(postgres.create_database(), max_connections=1)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.reading():
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    with pytest.raises(StoreBusy, match="busy"):
        store.last_seq  # noqa: B018
    release.set()
    holder.join(30)
    assert store.append(1, [(1, 4.0)]).seq == 1 and not store._down.is_set()
    with store.writing() as db:  # a statement timeout is this request's failure too
        db.execute("SET statement_timeout = 1")
        with pytest.raises(Exception):  # noqa: B017
            db.execute("SELECT pg_sleep(1)")
    with pytest.raises(StoreBusy):
        with store.reading() as db:
            db.execute("SET statement_timeout = 1")
            db.execute("SELECT pg_sleep(1)")
    assert not store._down.is_set() and store.last_seq == 1
    store.close()


def test_no_password_reaches_a_message_in_any_form(postgres, monkeypatch):
    """userinfo, a password= parameter, PGPASSWORD: refused connections name the store without it."""
    from storage.postgres import PostgresStore, redact, scrub

    good = postgres.create_database()
    parts = good.split("@", 1)
    user = parts[0].rsplit(":", 1)[0]
    for url in (f"{user}:Wr0ngSecret@{parts[1]}", f"{user}@{parts[1]}?password=Wr0ngSecret&sslmode=disable"):
        with pytest.raises(StoreError) as refused:
            PostgresStore(url)
        assert "Wr0ngSecret" not in str(refused.value) and "***" in str(refused.value), refused.value
        assert "Wr0ngSecret" not in redact(url)
    monkeypatch.setenv("PGPASSWORD", "Wr0ngSecret")
    with pytest.raises(StoreError) as refused:
        PostgresStore(f"{user}@{parts[1]}")
    assert "Wr0ngSecret" not in str(refused.value)
    assert scrub("password Wr0ngSecret is wrong", f"{user}@{parts[1]}") == "password *** is wrong"


def test_a_version_download_takes_no_connection_requests_need(postgres, fixture_model, tmp_path):
    """Copying a version from the database uses a connection of its own: while it streams, a request on a
    pool of one connection is answered at once (it waited for the download's end, or failed, before)."""
    from storage.postgres import PostgresStore
    from storage.shipping import SharedVersions
    from storage.versions import ModelVersions

    store = PostgresStore(postgres.create_database(), max_connections=1)
    store.append(1, [(1, 4.0)])
    shared = SharedVersions(store)
    shared.upload(ModelVersions(fixture_model), ModelVersions(fixture_model).current(), keep=3)
    here = ModelVersions(tmp_path / "host")
    during = []
    install = here.install

    def streaming(number, files, point=True):
        during.append(store.last_seq)  # a request, mid-download
        return install(number, files, point)

    here.install = streaming
    assert shared.sync(here) and here.current() == ModelVersions(fixture_model).current() and during == [1]
    store.close()


def test_the_database_keeps_a_pinned_version_and_refuses_to_pin_a_dropped_one(postgres, fixture_model, tmp_path):
    """Uploads drop versions beyond ``keep`` but never the one the plan pins (the plan's row is locked first);
    a candidate upload does not move the database's current version; a dropped version cannot be pinned."""
    from conftest import copy_model
    from test_steering import publish_variant

    from storage.postgres import PostgresStore
    from storage.shipping import SharedVersions
    from storage.steering import PlanChanged, Steering
    from storage.versions import ModelVersions

    store = PostgresStore(postgres.create_database())
    shared, steering = SharedVersions(store), Steering(store)
    folder = copy_model(fixture_model, tmp_path / "m")
    versions = ModelVersions(folder)
    shared.upload(versions, 1, keep=1)
    assert steering.pin(1)["pinned"] == 1  # checked against the database's versions, in the transaction
    publish_variant(folder, 0.1)
    shared.upload(versions, 2, keep=1)
    publish_variant(folder, 0.2)
    shared.upload(versions, 3, keep=1, serve=False)  # a candidate
    assert shared.numbers() == [1, 2, 3] and shared.current() == 2  # the current one stays too
    publish_variant(folder, 0.3)
    shared.upload(versions, 4, keep=1)
    assert shared.numbers() == [1, 4] and shared.current() == 4
    with pytest.raises(PlanChanged, match="kept versions: 4, 1"):
        steering.pin(2)
    assert steering.plan()["pinned"] == 1
    store.close()


def test_people_changes_are_numbered_with_the_ratings_and_read_back_in_order(store):
    """Forgetting deletes the user's rows, tokens, keys and hidden movies in its transaction; withdrawals,
    hidden movies and movie rules take request numbers; a change that does not apply stores nothing and
    takes no number; any suffix of the changes replays to the state now."""
    from storage.people import NothingToChange, People
    from storage.store import Once

    people = People(store)
    store.append(1, [(10, 4.0), (11, 3.0)], Once("ratings:1", "k", "f"), {"user": 1})  # 1
    store.append(2, [(10, 2.0)])  # 2
    assert people.hide(1, [20, 21]) == 3 and people.set_rule(30, '{"hidden": true}') == 4
    UserTokens(store).issue(1)
    generation = store.tokens_generation()
    assert people.forget(1) == (5, 2, {10, 11})  # seq, rows deleted, their movies
    assert people.unrate(2, 10) == 6 and people.hide(1, [22]) == 7
    store.append(1, [(12, 5.0)])  # 8: afresh
    for refused in (lambda: people.unhide(1, 99), lambda: people.clear_rule(31)):
        with pytest.raises(NothingToChange):
            refused()
    assert store.last_seq == 8
    assert [(e.seq, e.user) for e in store.entries()] == [(8, 1)]  # 1 and 2 deleted, not flagged
    assert store.tokens_generation() != generation and UserTokens(store).owner("u1.x") is None
    with store.reading() as db:
        assert db.execute('SELECT count(*) FROM user_tokens WHERE "user" = 1').fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM idempotency WHERE scope = 'ratings:1'").fetchone()[0] == 0
    assert people.excluded() == ({1}, {(2, 10)})
    upto, changes = store.changes(0)
    assert upto == 8 and changes.rules == {30: '{"hidden": true}'}
    one, two = changes.users[1], changes.users[2]
    assert one.forgotten and one.ratings == {12: 5.0} and one.hidden == {22: True}  # hidden before: gone
    assert two.unrated == {10} and not two.ratings
    _, later = store.changes(5)
    assert not later.users[1].forgotten and later.users[1].hidden == {22: True} and later.rules == {}
    assert people.clear_rule(30) == 9 and store.changes(8)[1].rules == {30: None}
    assert people.unhide(1, 22) == 10 and store.changes(9)[1].users[1].hidden == {22: False}
    _, shown = store.changes(0, (3, 4))
    assert shown.rules == {30: None} and shown.users[1].hidden == {22: False} and not shown.users[1].ratings
    assert store.new_user(1, lambda u: False) == 3  # never 1, forgotten; nor 2, who withdrew a rating
    assert store.new_user(1, lambda u: u == 4) == 5
