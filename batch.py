"""Batch recommendations: every user's top-N from the version in service, computed on Spark's executors.

    spark-submit batch.py --model-dir M --out URI [--count 10] [--min-count 25] [--users FILE] [--format csv]
    python batch.py --model-dir M --out URI ...        (a local master, ``local[*]`` unless --master says)

The lists are the API's for that version (serving/recommender.py with ``batch``):
the same candidates, operators' rules, hidden movies, posted ratings folded in,
order and figures, outside any experiment, and not counted as shown.  The driver
holds the user ids only; each partition of users opens the version and the store
on its executor (a model folder every executor can read: the one on this host
for a local master, a shared path on a cluster) and writes its rows.  The output
is Parquet (or CSV with a header) part files with the columns ``userId, rank,
movieId, predicted_rating, ranking_score`` (``ranking_score`` empty for a user
the models know nothing about, who gets the popular fallback), and Spark's
``_SUCCESS`` marker once every part is written.  Bad arguments fail in one line
before Spark starts; the summary is one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from settings import Parser, whole
from storage.store import StoreError
from storage.versions import ModelVersions

COLUMNS = ("userId", "rank", "movieId", "predicted_rating", "ranking_score")
USERS_PER_PARTITION = 5000  # each partition opens the version and the store once


class BatchError(Exception):
    """A bad argument or a batch that cannot run; its message is the one line the CLI prints."""


def build_parser() -> Parser:
    p = Parser(prog="batch.py", description="Every user's top-N from the version in service, written by Spark.")
    p.add("--model-dir", env="RECOMMENDER_MODEL_DIR", required=True,
          help="the model folder the API serves from (env RECOMMENDER_MODEL_DIR)")
    p.add("--store", env="RECOMMENDER_STORE",
          help="the ratings store when it is not the folder's SQLite: postgresql://... (env RECOMMENDER_STORE)")
    p.add("--out", required=True, help="where the part files go: a folder that does not exist yet, or a "
                                       "Hadoop URI (hdfs://, s3a://, file://)")
    p.add("--count", type=whole(1, 1000), default=10, help="movies per user (default 10)")
    p.add("--min-count", type=whole(0, 10**9), default=25,
          help="only movies with at least this many ratings, as the API's min_count (default 25)")
    p.add("--users", type=Path, help="a file of user ids, one per line (a first line 'userId' is a header); "
                                     "default: every user the version knows or who posted since")
    p.add("--format", choices=("parquet", "csv"), default="parquet", help="parquet (default) or csv with a header")
    p.add("--master", env="SPARK_MASTER", help="Spark master (env SPARK_MASTER; default: spark-submit's, "
                                                "else local[*])")
    return p


def read_users(path: Path) -> np.ndarray:
    """The user ids of a file, one per line, in order and without repeats; BatchError naming a bad line."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"--users {path}: {exc}") from None
    ids: dict[int, None] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or (number == 1 and text == "userId"):
            continue
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            raise BatchError(f"--users {path}, line {number}: expected a user id, not {text[:40]!r}")
        ids[int(text)] = None
    if not ids:
        raise BatchError(f"--users {path}: no user id in it")
    return np.fromiter(ids, dtype=np.int64, count=len(ids))


def check_out(out: str) -> None:
    """A local output folder must not exist yet (Spark would refuse it only after starting)."""
    parsed = urlparse(out)
    if parsed.scheme in ("", "file") and Path(parsed.path if parsed.scheme else out).exists():
        raise BatchError(f"--out {out} exists already: give a new folder (nothing is overwritten)")


def serving_version(model_dir: Path, store_url: str | None, users: np.ndarray | None) -> tuple[int, np.ndarray]:
    """The version in service and the users to list (``users``, else every user it knows or who posted
    since), read on the driver without Spark; BatchError when nothing is published."""
    from serving.recommender import Recommender
    from storage.backends import open_store

    recommender = Recommender(model_dir, open_store(store_url, model_dir)).start(watch=False)
    try:
        if recommender.version is None:
            raise BatchError(f"--model-dir {model_dir}: no model version is published there yet "
                             f"({recommender.load_error or 'train one with server.py'})")
        served = recommender.current()
        if users is None:
            posted = np.fromiter(served.posted, dtype=np.int64, count=len(served.posted))
            users = np.union1d(np.asarray(served.histories.users, dtype=np.int64), posted)
        return served.number, users
    finally:
        recommender.close()


def lists(model_dir: str, store_url: str | None, version: int, count: int, min_count: int,
          users: Iterable[int]) -> Iterator[tuple]:
    """One partition's rows: each user's list from ``version``, opened here (on the executor)."""
    from serving.recommender import Recommender
    from storage.backends import open_store

    recommender = Recommender(Path(model_dir), open_store(store_url, Path(model_dir))).start(watch=False)
    try:
        if recommender.version != version:
            raise RuntimeError(f"the version in service moved from {version} to {recommender.version} during "
                               "the batch: run it again for one version's lists")
        for user in users:
            top = recommender.recommend(int(user), count, min_count, batch=True)
            for rank, scored in enumerate(top.movies, 1):
                yield (int(user), rank, scored.movie.movie_id, scored.predicted_rating, scored.ranking_score)
    finally:
        recommender.close()


def run(sc, model_dir: Path, out: str, count: int = 10, min_count: int = 25, users: np.ndarray | None = None,
        fmt: str = "parquet", store_url: str | None = None) -> dict:
    """Write every user's (or ``users``') list as ``fmt`` part files under ``out``; the summary."""
    from pyspark.sql import SparkSession
    from pyspark.sql.types import DoubleType, IntegerType, LongType, StructField, StructType

    start = time.perf_counter()
    version, users = serving_version(model_dir, store_url, users)
    schema = StructType([StructField("userId", LongType(), False), StructField("rank", IntegerType(), False),
                         StructField("movieId", LongType(), False),
                         StructField("predicted_rating", DoubleType(), False),
                         StructField("ranking_score", DoubleType(), True)])
    slices = max(sc.defaultParallelism, -(-len(users) // USERS_PER_PARTITION))
    where = str(Path(model_dir).resolve())
    rows = sc.parallelize(users.tolist(), slices).mapPartitions(
        lambda part: lists(where, store_url, version, count, min_count, part))
    spark = SparkSession.builder.getOrCreate()  # over the one SparkContext ``sc``
    frame = spark.createDataFrame(rows, schema)
    writer = frame.write.mode("errorifexists")
    if fmt == "csv":
        writer.option("header", True).csv(out)
    else:
        writer.parquet(out)
    written = spark.read.format(fmt).option("header", True).load(out).count()  # what is there, not what was meant
    return {"model_version": version, "users": int(len(users)), "rows": int(written), "out": out, "format": fmt,
            "count": count, "min_count": min_count, "partitions": slices,
            "seconds": round(time.perf_counter() - start, 2)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model_dir = Path(args.model_dir)
        if not model_dir.is_dir() or (args.store is None and ModelVersions(model_dir).current() is None):
            raise BatchError(f"--model-dir {model_dir}: no published model version there")
        users = read_users(args.users) if args.users is not None else None
        check_out(args.out)
    except BatchError as exc:
        print(f"batch.py: {exc}", file=sys.stderr)
        return 2
    from spark.context import create_context

    sc = create_context(args.master, app_name="movie-recommender-batch")
    try:
        print(json.dumps(run(sc, model_dir, args.out, args.count, args.min_count, users, args.format,
                             args.store)))
    except (BatchError, StoreError) as exc:
        print(f"batch.py: {exc}", file=sys.stderr)
        return 1
    finally:
        sc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
