"""The SQLite store on disk: whole requests or nothing, through full disks, torn writes and crashes (what every
store promises is in test_store_contract.py, on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import zlib

import pytest

from storage.sqlite import SQLiteStore
from storage.store import StoreError


def _posted(store: SQLiteStore, user: int) -> list[tuple[int, float]]:
    """The user's newest rating of each movie, by movie id, as a reader folding in everything sees it."""
    return sorted(store.changes(0)[1].ratings().get(user, {}).items())


def _pairs(store: SQLiteStore):
    return [(e.seq, e.user, e.ratings) for e in store.entries()]


def test_the_file_is_its_owners_only_and_a_full_disk_stores_nothing(tmp_path):
    store = SQLiteStore(tmp_path / "ratings.db")
    assert stat.S_IMODE((tmp_path / "ratings.db").stat().st_mode) == 0o600
    store.append(1, [(10, 4.0)])
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")  # the disk is full
    with pytest.raises(StoreError, match="full"):
        store.append(2, [(m, 3.0) for m in range(5000)])
    assert store.last_seq == 1 and _pairs(store) == [(1, 1, ((10, 4.0),))]
    store._db.execute("PRAGMA max_page_count=1073741823")
    assert store.append(3, [(30, 2.5)]).seq == 2  # no gap, nothing half-stored
    store.close()
    assert _pairs(SQLiteStore(tmp_path / "ratings.db")) == [(1, 1, ((10, 4.0),)), (2, 3, ((30, 2.5),))]


def test_a_torn_last_write_loses_that_request_whole_and_nothing_before(tmp_path):
    store = SQLiteStore(tmp_path / "live" / "ratings.db")
    store.append(1, [(10, 4.0)])
    store.append(2, [(20, 3.5), (21, 1.0)])
    wal = tmp_path / "live" / "ratings.db-wal"
    size_before_third = wal.stat().st_size
    store.append(3, [(30, 5.0), (31, 0.5)])
    # A power cut in the middle of the third commit: copy what is on disk and cut the WAL inside its frame.
    (tmp_path / "crash").mkdir()
    shutil.copy(tmp_path / "live" / "ratings.db", tmp_path / "crash" / "ratings.db")
    torn = wal.read_bytes()[: size_before_third + (wal.stat().st_size - size_before_third) // 2]
    (tmp_path / "crash" / "ratings.db-wal").write_bytes(torn)
    store.close()
    recovered = SQLiteStore(tmp_path / "crash" / "ratings.db")
    assert _pairs(recovered) == [(1, 1, ((10, 4.0),)), (2, 2, ((20, 3.5), (21, 1.0)))]
    assert recovered.append(4, [(40, 2.0)]).seq == 3


def test_commits_are_fsynced_and_the_new_store_is_in_its_folder_for_good(tmp_path, monkeypatch):
    synced_dirs = []
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_dirs.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = SQLiteStore(tmp_path / "fresh" / "ratings.db")
    assert str(tmp_path / "fresh") in synced_dirs  # a fresh folder's first acknowledged rating survives
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: the WAL is fsync'd per commit
    store.close()


def _old_line(seq: int, user: int, ratings: list) -> bytes:
    body = json.dumps({"seq": seq, "user": user, "ratings": ratings, "time": 1.0e9 + seq},
                      separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def test_an_old_ratings_log_is_imported_once_losing_nothing(tmp_path):
    old = tmp_path / "ratings.log"
    old.write_bytes(_old_line(1, 5, [[1, 4]]) + _old_line(2, 6, [[2, 3.5], [3, 1.0]]) + _old_line(3, 5, [[1, 2.0]])
                    + b'1f2e3d4c {"seq":4,"user":7,"ratin')  # a torn last line was never acknowledged
    store = SQLiteStore(tmp_path / "ratings.db")
    assert _pairs(store) == [(1, 5, ((1, 4.0),)), (2, 6, ((2, 3.5), (3, 1.0))), (3, 5, ((1, 2.0),))]
    assert _posted(store, 5) == [(1, 2.0)] and store.last_seq == 3
    assert not old.exists() and (tmp_path / "ratings.log.migrated").exists()
    store.close()
    old.write_bytes((tmp_path / "ratings.log.migrated").read_bytes())  # a crash before the rename
    again = SQLiteStore(tmp_path / "ratings.db")
    assert len(again.entries()) == 3 and not old.exists()


def test_a_store_from_before_request_numbers_in_meta_continues_its_numbering(tmp_path):
    db = sqlite3.connect(tmp_path / "ratings.db")
    db.executescript("CREATE TABLE ratings (seq INTEGER NOT NULL, user INTEGER NOT NULL, movie INTEGER NOT NULL, "
                     "rating REAL NOT NULL, time REAL NOT NULL, PRIMARY KEY (seq, movie)) WITHOUT ROWID;"
                     "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "INSERT INTO ratings VALUES (41, 5, 1, 4.0, 1.0), (42, 5, 2, 3.0, 2.0);"
                     "INSERT INTO meta VALUES ('store_id', 'old'), ('trained_seq', '41');")
    db.close()
    store = SQLiteStore(tmp_path / "ratings.db")
    assert store.last_seq == 42 and store.store_id == "old"
    assert store.append(6, [(3, 2.5)]).seq == 43
