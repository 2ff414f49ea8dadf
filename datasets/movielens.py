"""Read the MovieLens formats into Spark RDDs.

Three layouts exist, told apart by the files present:

* ``ratings.csv`` / ``movies.csv`` (ml-latest, ml-latest-small, ml-20m, ml-25m, ml-32m):
  comma-separated with a header; titles containing commas are quoted.
* ``ratings.dat`` / ``movies.dat`` (ml-1m, ml-10m): fields separated by ``::``.
* ``u.data`` / ``u.item`` (ml-100k): tab-separated ratings, pipe-separated latin-1
  items with 19 genre flags.

Paths may be anything ``sc.textFile`` accepts (local paths, file://, hdfs://, s3a://).
Malformed lines are skipped and counted; a missing or empty dataset raises
:class:`DatasetError` with a one-line message.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# ml-100k's u.item genre flags, in file order; names follow ml-latest's spelling.
ML100K_GENRES = (
    "(no genres listed)", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)


class DatasetError(Exception):
    """The dataset cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class Layout:
    """Where a dataset's files are and how to read them."""

    kind: str  # "csv", "dat" or "100k"
    ratings: str
    movies: str


@dataclass(frozen=True)
class Movie:
    movie_id: int
    title: str
    genres: tuple[str, ...]


LAYOUTS = (
    ("csv", "ratings.csv", "movies.csv"),
    ("dat", "ratings.dat", "movies.dat"),
    ("100k", "u.data", "u.item"),
)


def dataset_name(dataset: str) -> str:
    """A dataset's short name, the last part of its path or URI (ml-latest-small for datasets/ml-latest-small/)."""
    return dataset.rstrip("/").rsplit("/", 1)[-1]


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _exists(sc, uri: str) -> bool:
    from spark.internals import hadoop_path  # only with Spark: an API process imports this module without it

    path, fs = hadoop_path(sc, uri)
    return bool(fs.exists(path))


def detect_layout(sc, directory: str) -> Layout:
    """Find which MovieLens layout ``directory`` holds."""
    return _find_layout(directory, lambda uri: _exists(sc, uri))


def check_local(directory: str) -> None:
    """For a local folder, raise the DatasetError :func:`detect_layout` would, without starting Spark
    (a URI is checked once Spark runs)."""
    if _local_path(directory) is not None:
        _find_layout(directory, lambda uri: _local_path(uri).exists())


def _find_layout(directory: str, exists) -> Layout:
    for kind, ratings, movies in LAYOUTS:
        if exists(_join(directory, ratings)):
            if not exists(_join(directory, movies)):
                raise DatasetError(f"{directory} has {ratings} but no {movies}")
            return Layout(kind, _join(directory, ratings), _join(directory, movies))
    raise DatasetError(
        f"no MovieLens dataset in {directory}: expected ratings.csv, ratings.dat or u.data "
        "(fetch one with `python -m datasets.fetch ml-latest-small`)"
    )


def identity(dataset: str) -> str:
    """Where a dataset is, independent of the working folder: a local path resolved, a URI as given."""
    local = _local_path(dataset)
    return str(local.resolve()) if local is not None else dataset.rstrip("/")


def fingerprint(sc, layout: Layout) -> str:
    """Identify the dataset's content: a SHA-256 of local files, size and mtime of remote ones."""
    digest = hashlib.sha256(layout.kind.encode())
    for uri in (layout.ratings, layout.movies):
        local = _local_path(uri)
        if local is not None:
            with open(local, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        else:
            from spark.internals import hadoop_path

            path, fs = hadoop_path(sc, uri)
            status = fs.getFileStatus(path)
            digest.update(f"{uri}:{status.getLen()}:{status.getModificationTime()}".encode())
    return digest.hexdigest()


def _local_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" in uri:
        return None
    return Path(uri)


def parse_rating(kind: str, line: str) -> tuple[int, int, float, int] | None:
    """Parse one ratings line into (user, movie, rating, timestamp); None if malformed."""
    if kind == "csv":
        fields = line.split(",") if '"' not in line else next(csv.reader([line]), [])
    elif kind == "dat":
        fields = line.split("::")
    else:
        fields = line.split("\t")
    if len(fields) != 4:
        return None
    try:
        user, movie, rating = int(fields[0]), int(fields[1]), float(fields[2])
        timestamp = int(fields[3])
    except ValueError:
        return None
    if not (0 <= user <= 2**31 - 1 and 0 <= movie <= 2**31 - 1) or not 0 <= rating < math.inf:  # no NaN, inf, < 0
        return None
    return user, movie, rating, timestamp


def parse_movie(kind: str, line: str) -> Movie | None:
    """Parse one movies line; None if malformed."""
    try:
        if kind == "csv":
            fields = next(csv.reader([line]), [])
            if len(fields) != 3:
                return None
            genres = () if fields[2] in ("", "(no genres listed)") else tuple(fields[2].split("|"))
            return Movie(int(fields[0]), fields[1], genres)
        if kind == "dat":
            fields = line.split("::")
            if len(fields) != 3:
                return None
            genres = tuple(g for g in fields[2].split("|") if g)
            return Movie(int(fields[0]), fields[1], genres)
        fields = line.split("|")
        if len(fields) != 5 + len(ML100K_GENRES):
            return None
        flags = fields[5:]
        genres = tuple(name for name, flag in zip(ML100K_GENRES, flags) if flag == "1" and name != ML100K_GENRES[0])
        return Movie(int(fields[0]), fields[1], genres)
    except ValueError:
        return None


def decode(raw: bytes) -> str:
    """Decode a line as UTF-8, falling back to latin-1 (ml-100k and ml-1m are latin-1)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _is_header(kind: str, line: str) -> bool:
    return kind == "csv" and (line.startswith("userId,") or line.startswith("movieId,"))


def load_ratings(sc, layout: Layout, min_partitions: int | None = None, with_timestamp: bool = False):
    """Return (RDD of (user, movie, rating), malformed-line accumulator).

    ``with_timestamp`` adds the rating's Unix time as a fourth field.  The
    accumulator is filled once an action has run over the RDD.
    """
    kind = layout.kind
    bad = sc.accumulator(0)

    def parse_partition(lines):
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if not line.strip() or _is_header(kind, line):
                continue
            parsed = parse_rating(kind, line)
            if parsed is None:
                bad.add(1)
                continue
            yield parsed if with_timestamp else parsed[:3]

    lines = sc.textFile(layout.ratings, minPartitions=min_partitions, use_unicode=False)
    return lines.mapPartitions(parse_partition), bad


def first_malformed(sc, layout: Layout) -> tuple[int, str] | None:
    """The first malformed line of the ratings file, as (line number from 1, its text); None if there is none.

    A job of its own over the file, so only worth running once the count says there are some.
    """
    kind = layout.kind

    def bad(numbered) -> bool:
        line = numbered[0].decode("utf-8", "replace").rstrip("\r")
        return bool(line.strip()) and not _is_header(kind, line) and parse_rating(kind, line) is None

    lines = sc.textFile(layout.ratings, use_unicode=False).zipWithIndex().filter(bad)
    found = lines.take(1)
    if not found:
        return None
    raw, index = found[0]
    return index + 1, raw.decode("utf-8", "replace").rstrip("\r")


def load_movies(sc, layout: Layout) -> dict[int, Movie]:
    """Collect the movie catalogue into the driver (a few MB even for ml-32m)."""
    movies: dict[int, Movie] = {}
    bad = 0
    # Read raw bytes: sc.textFile decodes as UTF-8 in the JVM and would mangle latin-1 titles.
    content = b"".join(data for _, data in sc.binaryFiles(layout.movies).collect())
    for raw in content.split(b"\n"):
        line = decode(raw).rstrip("\r")
        if not line.strip() or _is_header(layout.kind, line):
            continue
        movie = parse_movie(layout.kind, line)
        if movie is None:
            bad += 1
            continue
        movies[movie.movie_id] = movie
    if bad:
        log.warning("skipped %d malformed line(s) in %s", bad, layout.movies)
    if not movies:
        raise DatasetError(f"{layout.movies} holds no movies")
    return movies
