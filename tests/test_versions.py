"""Published model versions: whole or not at all, one atomic switch, and pruning that spares what is served."""

from __future__ import annotations

import os

import numpy as np
import pytest

from model import ModelError, Models, RankingModel, RankingParams, RatingModel, RatingParams, Scale
from storage import versions as versions_module
from storage.catalogue import Catalogue, Histories
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
