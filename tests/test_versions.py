"""Published model versions: whole or not at all, one atomic switch, and pruning that spares what is served."""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest

from model import (
    ModelError,
    Models,
    RankingModel,
    RankingParams,
    RatingModel,
    RatingParams,
    Scale,
    TransientModelError,
)
from storage import versions as versions_module
from storage.catalogue import Catalogue, Histories
from storage.store import StoreError
from storage.versions import ModelVersions


def _models(seed: int) -> Models:
    rng = np.random.default_rng(seed)
    users, movies = np.arange(1, 6), np.arange(10, 18)
    rating = RatingModel(mu=3.5, user_ids=users, user_bias=rng.normal(0, 0.3, 5), user_factors=rng.normal(size=(5, 2)),
                         movie_ids=movies, movie_bias=rng.normal(0, 0.3, 8), movie_factors=rng.normal(size=(8, 2)),
                         params=RatingParams(rank=2), scale=Scale(0.5, 5.0, 0.5))
    ranking = RankingModel(user_ids=users, user_factors=rng.normal(size=(5, 3)), movie_ids=movies,
                           movie_factors=rng.normal(size=(8, 3)), params=RankingParams(rank=3))
    return Models(rating, ranking)


CATALOGUE = Catalogue(np.arange(10, 18), [f"Movie {m}" for m in range(10, 18)], [("Drama",)] * 8)
HISTORIES = Histories.build(np.array([1, 1, 2, 1]), np.array([0, 3, 2, 0]), np.array([4.0, 2.5, 3.0, 1.0]),
                            n_rows=8)


def _publish(versions: ModelVersions, seed: int = 0, seq: int = 0) -> int:
    return versions.publish(_models(seed), CATALOGUE, HISTORIES, {"seq": seq})


def test_a_version_holds_models_catalogue_and_the_users_ratings(tmp_path):
    versions = ModelVersions(tmp_path)
    assert versions.current() is None
    with pytest.raises(ModelError, match="no model version has been published"):
        versions.load()
    assert _publish(versions, seq=7) == 1 and versions.current() == 1
    version, lease = versions.load()
    lease.release()
    assert version.number == 1 and version.seq == 7
    assert version.catalogue.titles == CATALOGUE.titles and version.catalogue.genre_names == ["Drama"]
    assert version.histories.of(1).ratings.tolist() == [1.0, 2.5]  # the later rating of row 0 won
    assert version.histories.counts.tolist() == [1, 0, 1, 1, 0, 0, 0, 0]
    assert version.histories.sums.tolist() == [1.0, 0.0, 3.0, 2.5, 0.0, 0.0, 0.0, 0.0]
    assert np.array_equal(version.models.rating.movie_factors, _models(0).rating.movie_factors)


@pytest.mark.parametrize("fail_at", ["catalogue.json", "version.json", "CURRENT.tmp"])
def test_a_publisher_that_dies_midway_leaves_the_current_version_in_service(tmp_path, monkeypatch, fail_at):
    versions = ModelVersions(tmp_path)
    _publish(versions, seed=1)
    real_write = versions_module.write_file

    def failing(path, data):
        if path.name == fail_at:
            raise OSError(28, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(versions_module, "write_file", failing)
    monkeypatch.setattr("storage.files.write_file", failing)  # CURRENT goes through replace_durably
    with pytest.raises(OSError, match="No space"):
        _publish(versions, seed=2)
    monkeypatch.undo()
    assert versions.current() == 1
    version, lease = versions.load()
    lease.release()
    assert np.array_equal(version.models.rating.movie_factors, _models(1).rating.movie_factors)
    (tmp_path / "model.json").write_text("{}")  # the single model of the layout before versions
    (tmp_path / "model-123.npz").write_bytes(b"old")
    ModelVersions(tmp_path).clean_partial()  # what the next trainer does first
    assert not [p for p in versions.root.iterdir() if p.name.startswith(".")]
    assert not (tmp_path / "model.json").exists() and not list(tmp_path.glob("model-*.npz"))
    assert _publish(versions, seed=3) >= 2 and versions.load()[0].models.rating.movie_factors.shape == (8, 2)


def test_a_failing_fsync_publishes_nothing(tmp_path, monkeypatch):
    versions = ModelVersions(tmp_path)
    _publish(versions)
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the second file's data never reached the disk
            raise OSError(5, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="Input/output"):
        _publish(versions, seed=4)
    monkeypatch.undo()
    assert versions.current() == 1 and versions.numbers() == [1]


def test_old_versions_are_pruned_unless_a_process_still_serves_them(tmp_path):
    versions = ModelVersions(tmp_path, keep=2)
    _publish(versions)
    _, held = versions.load(1)  # an API process that has not swapped yet
    for seed in range(2, 6):
        _publish(versions, seed=seed)
    assert versions.numbers() == [1, 4, 5] and versions.current() == 5
    held.release()
    _publish(versions, seed=6)
    assert versions.numbers() == [5, 6]


def test_a_garbled_pointer_is_a_clear_error(tmp_path):
    versions = ModelVersions(tmp_path)
    _publish(versions)
    (versions.root / "CURRENT").write_text("banana\n")
    with pytest.raises(ModelError, match="not a version number"):
        versions.load()


def _leftovers(versions: ModelVersions) -> list[str]:
    return sorted(p.name for p in versions.root.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("fail_at", ["model-mu.npy", "catalogue.json", "CURRENT.tmp"])
def test_a_publish_that_fills_the_disk_removes_its_partial_folder_at_once(tmp_path, monkeypatch, fail_at):
    """Issue 25, item 9: a full disk must not stay full until the next try (SQLite commits fail meanwhile):
    the failed publish takes its temporary folder (or the version it renamed in but never named) with it."""
    versions = ModelVersions(tmp_path)
    _publish(versions, seed=1)
    real_write, real_open = versions_module.write_file, open

    def failing(path, data):
        if path.name == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    def failing_open(path, *args, **kwargs):  # an array's file: np.save writes through publish's open()
        if str(path).endswith(fail_at) and args and "w" in args[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(versions_module, "write_file", failing)
    monkeypatch.setattr("storage.files.write_file", failing)
    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OSError, match="No space"):
        _publish(versions, seed=2)
    monkeypatch.undo()
    assert _leftovers(versions) == [] and versions.numbers() == [1] and versions.current() == 1


def _stream(version_dir, fail_after: int | None = None, error: Exception | None = None, between=None):
    """A version's files as install() takes them, optionally raising ``error`` after ``fail_after`` files, or
    calling ``between()`` halfway through the first file."""
    meta = json.loads((version_dir / "version.json").read_text())
    names = ["version.json", *meta["files"]]

    def chunks(k: int, name: str):
        data = (version_dir / name).read_bytes()
        yield data[:len(data) // 2]
        if k == 0 and between is not None:
            between()
        if fail_after is not None and k >= fail_after:
            raise error
        yield data[len(data) // 2:]

    return {name: chunks(k, name) for k, name in enumerate(names)}


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   StoreError("the PostgreSQL store is not answering")])
def test_a_failed_install_removes_its_partial_folder_at_once(tmp_path, error):
    """Item 9 on an API host: a download that fails midway (disk full, database gone) leaves nothing."""
    trainer, host = ModelVersions(tmp_path / "trainer"), ModelVersions(tmp_path / "host")
    _publish(trainer)
    _publish(host, seed=5)
    with pytest.raises((ModelError, StoreError)) as raised:
        host.install(2, _stream(trainer.path(1), fail_after=2, error=error))
    assert isinstance(raised.value, TransientModelError) or isinstance(error, StoreError)  # a full disk passes
    assert _leftovers(host) == [] and host.numbers() == [1] and host.current() == 1


def test_prune_skips_a_version_another_process_removed_meanwhile(tmp_path, monkeypatch):
    """Item 25 (b): two processes pruning one folder; the other one removed the version between our lock and
    our rename.  The publish went out (CURRENT moved): it must not raise and be recorded as failed."""
    versions = ModelVersions(tmp_path, keep=1)
    _publish(versions)
    real_rename = os.rename

    def racing(src, dst):
        if os.path.basename(dst).startswith(".removing-"):
            shutil.rmtree(src)  # the other pruner got there first
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", racing)
    assert _publish(versions, seed=2) == 2
    monkeypatch.undo()
    assert versions.current() == 2 and versions.numbers() == [2]


def test_clean_partial_leaves_a_folder_a_live_writer_holds(tmp_path):
    """Item 25 (c): a starting trainer's clean_partial removed API processes' half-written installs; it now
    removes only temporary folders nobody holds (a dead process's)."""
    trainer, host = ModelVersions(tmp_path / "trainer"), ModelVersions(tmp_path / "host")
    _publish(trainer)
    dead = host.root / ".publishing-v000007-999999"  # a writer that died: the kernel dropped its flock
    dead.mkdir(parents=True)
    host.install(1, _stream(trainer.path(1), between=lambda: ModelVersions(tmp_path / "host").clean_partial()))
    assert host.current() == 1 and not dead.exists()
    version, lease = host.load()
    lease.release()
    with host._scratch(2) as held:
        ModelVersions(tmp_path / "host").clean_partial()
        assert held.is_dir()
    ModelVersions(tmp_path / "host").clean_partial()  # released, not renamed in: a leftover now
    assert not held.exists() and _leftovers(host) == []


@pytest.mark.parametrize("code", [errno.EMFILE, errno.EIO, errno.ENOMEM])
def test_a_passing_read_error_is_transient_and_a_missing_file_is_damage(tmp_path, monkeypatch, code):
    """Item 13: _read says whether its OSError is worth retrying."""
    versions = ModelVersions(tmp_path)
    _publish(versions)
    real_load = np.load
    raising = {"error": OSError(code, os.strerror(code))}

    def load(*args, **kwargs):
        raise raising["error"]

    monkeypatch.setattr(versions_module.np, "load", load)
    with pytest.raises(TransientModelError):
        versions.load()
    raising["error"] = FileNotFoundError(errno.ENOENT, "No such file or directory")
    with pytest.raises(ModelError) as damaged:
        versions.load()
    assert not isinstance(damaged.value, TransientModelError)
    monkeypatch.setattr(versions_module.np, "load", real_load)
    versions.load()[1].release()


def test_a_passing_load_error_is_retried_with_back_off_and_damage_is_not(tmp_path, monkeypatch):
    """Item 13: one EMFILE at start no longer refuses the version for good (503 until the next publish):
    it is read again after 1 s, then 2 s...; a version that fails its checksum is still not read again."""
    from serving.recommender import Recommender

    versions = ModelVersions(tmp_path)
    _publish(versions)
    real_load, calls, failures = np.load, [], [2]

    def load(*args, **kwargs):
        calls.append(args[0])
        if failures[0]:
            failures[0] -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(versions_module.np, "load", load)
    now = [1000.0]
    rec = Recommender(tmp_path)
    rec.clock = lambda: now[0]
    try:
        rec.start(watch=False)
        assert rec.version is None and "Too many open files" in rec.load_error
        tried = len(calls)
        assert not rec.refresh() and len(calls) == tried  # within the back-off: not read again
        now[0] += 1.0
        assert not rec.refresh() and len(calls) == tried + 1  # the second failure: 2 s now
        now[0] += 1.5
        assert not rec.refresh() and len(calls) == tried + 1
        now[0] += 0.5
        assert rec.refresh() and rec.version == 1 and rec.load_error is None
        _publish(versions, seed=2)
        arrays = versions.path(2) / "model-movie_factors.npy"
        data = bytearray(arrays.read_bytes())
        data[-1] ^= 0xFF
        arrays.write_bytes(bytes(data))
        assert not rec.refresh() and "checksum" in rec.load_error
        tried = len(calls)
        now[0] += 3600
        assert not rec.refresh() and len(calls) == tried and rec.version == 1  # damage: refused until a new one
    finally:
        rec.close()


def test_a_shipped_version_that_fails_its_checksum_is_downloaded_once(tmp_path, postgres, caplog):
    """Item 8: a bad version in the PostgreSQL store was downloaded again every second on every API host
    (255 MB a time at 20M ratings); it is now skipped, and said once, until the pointer names another."""
    from serving.recommender import Recommender
    from storage.postgres import PostgresStore
    from storage.shipping import SharedVersions

    url = postgres.create_database()
    trainer_store = PostgresStore(url)
    shared, trainer = SharedVersions(trainer_store), ModelVersions(tmp_path / "trainer")
    _publish(trainer)
    shared.upload(trainer, 1, keep=3)
    with trainer_store.writing() as db:  # one part damaged in the database
        db.execute("UPDATE model_files SET data = ? WHERE number = ? AND name = ?",
                   (b"[]", 1, "catalogue.json"))
    rec = Recommender(tmp_path / "host", store=PostgresStore(url))
    installs = []
    real_install = rec.versions.install
    rec.versions.install = lambda number, files, point=True: (installs.append(number)
                                                              or real_install(number, files, point))
    try:
        with caplog.at_level("WARNING"):
            rec.start(watch=False)
            for _ in range(3):
                assert not rec.refresh()
        assert installs == [1] and caplog.text.count("does not match its checksum") == 1
        assert rec.version is None and _leftovers(rec.versions) == []
        _publish(trainer, seed=2)
        shared.upload(trainer, 2, keep=3)  # the pointer moves on: the next version is fetched
        assert rec.refresh() and rec.version == 2 and installs == [1, 2]
    finally:
        rec.close()
        trainer_store.close()
