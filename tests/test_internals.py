"""Each private pyspark interface the project uses (spark/internals.py), against the installed pyspark."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from spark import internals

RATINGS = [(u, m, float((u * 7 + m * 3) % 5 + 1)) for u in range(1, 13) for m in range(1, 9) if (u + m) % 3]


def test_the_installed_pyspark_is_in_the_supported_range():
    import pyspark

    assert internals.supported(pyspark.__version__), f"pyspark {pyspark.__version__}: check spark/internals.py"
    assert [internals.supported(v) for v in ("4.0.1", "4.1.0", "4.1.9", "4.2.0", "5.0.0")] == \
        [False, True, True, False, False]


def test_hand_built_pickles_are_what_pyspark_pickles_for_mllib_ratings():
    from pyspark.mllib.recommendation import Rating

    users, movies = np.array([1, 70000, 2**31 - 1]), np.array([3, 5, 1])
    values = np.array([4.5, 0.5, -1.25])
    expected = [Rating(int(u), int(m), float(v)) for u, m, v in zip(users, movies, values)]
    assert pickle.loads(internals.pickled_ratings(users, movies, values)) == expected
    assert pickle.loads(internals.pickled_ratings(users[:0], movies[:0], values[:0])) == []


@pytest.mark.parametrize("implicit", [False, True])
def test_training_on_pickled_batches_gives_the_model_the_public_api_gives(sc, implicit):
    """The same data, seed and blocks through ``ALS.train``/``trainImplicit``: the same factors."""
    from pyspark.mllib.recommendation import ALS, Rating

    users, movies, values = (np.array(column) for column in zip(*RATINGS))
    batches = internals.as_bytes(sc.parallelize([(0, 40), (40, len(users))], 2).map(
        lambda cut: internals.pickled_ratings(users[cut[0]:cut[1]], movies[cut[0]:cut[1]], values[cut[0]:cut[1]])))
    ours = internals.train_als(sc, batches, implicit, rank=3, iterations=2, reg=0.1, blocks=2, seed=5, alpha=0.5)
    public = sc.parallelize([Rating(*r) for r in RATINGS], 2)
    if implicit:
        theirs = ALS.trainImplicit(public, 3, 2, 0.1, blocks=2, alpha=0.5, seed=5)
    else:
        theirs = ALS.train(public, 3, 2, 0.1, blocks=2, seed=5)
    for users_side in (True, False):
        rows = dict(internals.factor_rows(ours, users=users_side))
        features = theirs.userFeatures() if users_side else theirs.productFeatures()
        expected = dict(features.collect())
        assert rows.keys() == expected.keys()
        for key, vector in expected.items():
            assert np.allclose(rows[key], vector, atol=1e-6)
    assert ours.predict(1, 1) == pytest.approx(theirs.predict(1, 1), abs=1e-6)
    # Freeing a model's factors unpersists the RDDs Spark caches for it.
    java = ours._java_model
    assert java.userFeatures().getStorageLevel().useMemory()
    internals.free_factors(ours)
    assert not java.userFeatures().getStorageLevel().useMemory()
    assert not java.productFeatures().getStorageLevel().useMemory()
    with pytest.raises(ValueError):  # elements already pickled by pyspark cannot go as they are
        internals.as_bytes(sc.parallelize([b"x"]))


def test_a_group_cancelled_for_good_refuses_its_later_jobs_and_no_other(sc):
    group = "internals-test-group"
    internals.cancel_for_good(sc, group)
    failed, done = [], threading.Event()

    def job():
        sc.setJobGroup(group, "a job started after the cancel")
        try:
            sc.parallelize(range(10), 2).count()
        except Exception as exc:  # Py4JJavaError naming the cancellation
            failed.append(str(exc))
        finally:
            done.set()

    thread = threading.Thread(target=job)
    thread.start()
    assert done.wait(60)
    thread.join()
    assert failed and "cancel" in failed[0].lower()
    assert sc.parallelize(range(10), 2).count() == 10  # this thread's jobs are in no such group


def test_hadoop_paths_reach_local_files(sc, tmp_path):
    (tmp_path / "file.csv").write_text("x\n")
    path, fs = internals.hadoop_path(sc, (tmp_path / "file.csv").as_uri())
    assert fs.exists(path) and fs.getFileStatus(path).getLen() == 2
    path, fs = internals.hadoop_path(sc, str(tmp_path / "none.csv"))
    assert not fs.exists(path)
