"""Small MovieLens-shaped datasets the tests write themselves, in each of the three layouts.

Users fall into two taste groups: group 0 loves comedies (even movie ids below
the drama block) and dislikes dramas, group 1 the reverse.  That plants a
rank-1 structure ALS must find, so tests can check that a new user who rates
like group 0 is recommended comedies.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

# Titles that trip naive parsers: a comma inside quotes, quotes, non-ASCII.
SPECIAL_TITLES = {
    1: "American President, The (1995)",
    2: 'Shawshank "Redemption" Tale (1994)',
    3: "Café, Le (1990)",
    4: "Amélie (2001)",
}
ML100K_FLAGS = 19


@dataclass
class Fixture:
    path: Path
    kind: str
    comedies: list[int] = field(default_factory=list)
    dramas: list[int] = field(default_factory=list)
    ratings: list[tuple[int, int, float]] = field(default_factory=list)
    groups: dict[int, int] = field(default_factory=dict)
    titles: dict[int, str] = field(default_factory=dict)


def _half(x: float, whole: bool) -> float:
    step = 1.0 if whole else 0.5
    low = 1.0 if whole else 0.5
    return min(5.0, max(low, round(x / step) * step))


def write_dataset(directory: Path, kind: str = "csv", n_users: int = 60, n_movies: int = 40,
                  density: float = 0.6, seed: int = 0, bad_lines: int = 0) -> Fixture:
    """Write a dataset in ``kind`` layout ("csv", "dat" or "100k") and return what it holds."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    whole = kind == "100k"
    movie_ids = list(range(1, n_movies + 1))
    comedies = [m for m in movie_ids if m <= n_movies // 2]
    dramas = [m for m in movie_ids if m > n_movies // 2]
    fx = Fixture(directory, kind, comedies, dramas)
    for m in movie_ids:
        fx.titles[m] = SPECIAL_TITLES.get(m, f"Movie {m} ({1950 + m})")
    for u in range(1, n_users + 1):
        group = u % 2
        fx.groups[u] = group
        for m in movie_ids:
            if rng.random() > density:
                continue
            likes = (m in comedies) == (group == 0)
            value = _half((4.4 if likes else 1.6) + rng.gauss(0, 0.4), whole)
            fx.ratings.append((u, m, value))
    genres = {m: ("Comedy",) if m in comedies else ("Drama",) for m in movie_ids}
    genres[2] = genres[2] + ("Crime",)

    def stamp(i: int) -> int:
        return 964_982_703 + i

    if kind == "csv":
        with open(directory / "ratings.csv", "w", newline="") as fh:
            fh.write("userId,movieId,rating,timestamp\n")
            for i, (u, m, r) in enumerate(fx.ratings):
                fh.write(f"{u},{m},{r:.1f},{stamp(i)}\n")
            for i in range(bad_lines):
                fh.write(["garbage line\n", "1,2\n", "x,1,4.0,5\n", "1,2,abc,5\n", "1,2,inf,5\n", "1,2,nan,5\n",
                          "1,2,-1.5,5\n"][i % 7])
        with open(directory / "movies.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["movieId", "title", "genres"])
            for m in movie_ids:
                writer.writerow([m, fx.titles[m], "|".join(genres[m])])
    elif kind == "dat":
        with open(directory / "ratings.dat", "w") as fh:
            for i, (u, m, r) in enumerate(fx.ratings):
                fh.write(f"{u}::{m}::{r:g}::{stamp(i)}\n")
            for i in range(bad_lines):
                fh.write(["junk\n", "1::2::3\n"][i % 2])
        with open(directory / "movies.dat", "w", encoding="latin-1") as fh:
            for m in movie_ids:
                fh.write(f"{m}::{fx.titles[m]}::{'|'.join(genres[m])}\n")
    elif kind == "100k":
        with open(directory / "u.data", "w") as fh:
            for i, (u, m, r) in enumerate(fx.ratings):
                fh.write(f"{u}\t{m}\t{int(r)}\t{stamp(i)}\n")
            for _ in range(bad_lines):
                fh.write("1\t2\n")
        names = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western"]
        with open(directory / "u.item", "w", encoding="latin-1") as fh:
            for m in movie_ids:
                flags = ["0"] * ML100K_FLAGS
                for g in genres[m]:
                    flags[names.index(g)] = "1"
                fh.write(f"{m}|{fx.titles[m]}|01-Jan-1995||http://example.invalid/{m}|{'|'.join(flags)}\n")
    else:
        raise ValueError(kind)
    return fx


def write_ratings_csv(path: Path, ratings: list[tuple[int, int, float]]) -> None:
    """A ratings.csv-style split file (header userId,movieId,rating,timestamp)."""
    with open(path, "w") as fh:
        fh.write("userId,movieId,rating,timestamp\n")
        for i, (u, m, r) in enumerate(ratings):
            fh.write(f"{u},{m},{r:.1f},{1_000_000 + i}\n")
