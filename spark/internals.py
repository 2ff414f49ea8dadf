"""Every use of pyspark's private or undocumented interfaces, in one place (supported: pyspark 4.1.x).

pyspark's public API has no way to hand ALS ratings that are already pickled,
to cancel a job group's future jobs, to free a model's cached factors, or to
reach a Hadoop file system; these functions do it through pyspark's internals.
Each is exercised by ``tests/test_internals.py`` against the installed pyspark,
so an upgrade that changes one fails there by name, not deep inside a fit.
Nothing here imports pyspark at module level: API processes may import this
package's neighbours without a JVM.
"""

from __future__ import annotations

import numpy as np

SUPPORTED = ("4.1.0", "4.2.0")  # pyspark versions this module was written and tested against: [low, high)


def supported(version: str) -> bool:
    """Whether a pyspark version is in ``SUPPORTED``."""
    def parts(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())

    return parts(SUPPORTED[0]) <= parts(version) < parts(SUPPORTED[1])

# mllib's ALS takes Rating objects pickled by Python; pickling them one by one (pyspark's
# Rating.__reduce__) cost 35 s a model at 20M ratings on 2 cores.  This writes the same pickle
# (protocol 2: a list of Rating(user, movie, value) calls) for a whole batch with NumPy.
_PICKLE_HEAD = b"\x80\x02]cpyspark.mllib.recommendation\nRating\nq\x000("  # list, Rating in memo 0, MARK
_PICKLE_TAIL = b"e."  # APPENDS, STOP
_PICKLE_RECORD = np.dtype([("get", "S2"), ("user_op", "S1"), ("user", "<i4"), ("movie_op", "S1"), ("movie", "<i4"),
                           ("value_op", "S1"), ("value", ">f8"), ("call", "S2")])


def pickled_ratings(users: np.ndarray, movies: np.ndarray, values) -> bytes:
    """``[Rating(user, movie, value), ...]`` pickled as Python's pickle would (BININT ids, BINFLOAT value):
    what pyspark's SerDe unpickles into mllib's ``Rating``."""
    record = np.empty(len(users), dtype=_PICKLE_RECORD)
    record["get"], record["user_op"], record["movie_op"], record["value_op"] = b"h\x00", b"J", b"J", b"G"
    record["user"], record["movie"] = users, movies
    record["value"] = values
    record["call"] = b"\x87R"  # TUPLE3, REDUCE
    return _PICKLE_HEAD + record.tobytes() + _PICKLE_TAIL


def as_bytes(rdd):
    """Mark a Python-transformed RDD (``map``, ``flatMap``, ...) of bytes so its workers hand each element to
    the JVM as it is, not pickled again.  Call it before anything reads or caches the RDD."""
    from pyspark.serializers import NoOpSerializer

    if "_jrdd_val" not in vars(rdd) or rdd._jrdd_val is not None:
        raise ValueError("as_bytes needs a Python-transformed RDD that nothing has read yet")
    rdd._jrdd_deserializer = NoOpSerializer()
    return rdd


def train_als(sc, pickled, implicit: bool, rank: int, iterations: int, reg: float, blocks: int, seed: int,
              alpha: float = 0.0):
    """mllib's ``trainALSModel`` / ``trainImplicitALSModel`` (what ``ALS.train`` and ``ALS.trainImplicit``
    call) on an ``as_bytes`` RDD of ``pickled_ratings`` batches.  Returns a ``MatrixFactorizationModel``."""
    from pyspark.mllib.common import callMLlibFunc
    from pyspark.mllib.recommendation import MatrixFactorizationModel
    from pyspark.serializers import NoOpSerializer

    if not isinstance(pickled._jrdd_deserializer, NoOpSerializer):
        raise ValueError("train_als needs an as_bytes RDD")
    java_ratings = sc._jvm.org.apache.spark.mllib.api.python.SerDe.pythonToJava(pickled._jrdd, True)
    if implicit:
        model = callMLlibFunc("trainImplicitALSModel", java_ratings, rank, iterations, float(reg), blocks,
                              float(alpha), False, seed)
    else:
        model = callMLlibFunc("trainALSModel", java_ratings, rank, iterations, float(reg), blocks, False, seed)
    return MatrixFactorizationModel(model)


def factor_rows(model, users: bool) -> list:
    """A model's (id, factors) rows as the JVM keeps them: ``userFeatures()`` would add a Python map over them."""
    return model.call("getUserFeatures" if users else "getProductFeatures").collect()


def free_factors(model) -> None:
    """Unpersist the factor RDDs Spark caches per model, so a long-running trainer does not accumulate them."""
    model._java_model.userFeatures().unpersist(False)
    model._java_model.productFeatures().unpersist(False)


def cancel_for_good(sc, group: str) -> None:
    """Cancel a job group's running jobs and every job started in it later (``cancelJobGroup`` cancels only
    the jobs running at that instant, and ALS runs dozens of short ones)."""
    sc._jsc.sc().cancelJobGroupAndFutureJobs(group)


def hadoop_path(sc, uri: str):
    """A Hadoop ``Path`` for ``uri`` and its ``FileSystem`` (local, HDFS, S3, ... as configured in Spark)."""
    path = sc._jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(sc._jsc.hadoopConfiguration())


def run_daemon(wrap_worker) -> None:
    """Run pyspark's Python worker daemon with its per-connection ``worker`` function wrapped."""
    from pyspark import daemon

    daemon.worker = wrap_worker(daemon.worker)
    daemon.manager()
