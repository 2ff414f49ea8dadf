"""What a published version holds besides the models: the catalogue and every user's ratings as of the
version.

The trainer builds both from the dataset and the stored posted ratings; an API
process loads them with the version, so it needs neither the dataset nor Spark.
Rows are catalogue rows: a movie's position in the sorted ``movie_ids``.  Plain
data and lookups: what a caller did wrong is the serving side's to say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$")


@dataclass(frozen=True)
class UserRatings:
    """All of one user's ratings: catalogue rows (ascending) and values."""

    rows: np.ndarray
    ratings: np.ndarray

    def with_posted(self, posted: dict[int, float]) -> UserRatings:
        """These ratings with ``posted`` (row -> rating) over them: a new rating of a movie replaces the old."""
        merged = dict(zip(self.rows.tolist(), self.ratings.tolist()))
        merged.update(posted)
        rows = np.array(sorted(merged), dtype=np.int32)
        return UserRatings(rows, np.array([merged[r] for r in rows.tolist()], dtype=np.float64))

    def without(self, rows: set[int]) -> UserRatings:
        """These ratings less those of the catalogue ``rows`` (withdrawn)."""
        keep = ~np.isin(self.rows, np.array(sorted(rows), dtype=np.int64))
        return UserRatings(self.rows[keep], self.ratings[keep])


NO_RATINGS = UserRatings(np.zeros(0, np.int32), np.zeros(0))


@dataclass
class Catalogue:
    """Every movie that is listed or rated, in id order, with titles and genres."""

    movie_ids: np.ndarray  # int64, sorted
    titles: list[str]
    genres: list[tuple[str, ...]]
    _row: dict[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.movie_ids = np.asarray(self.movie_ids, dtype=np.int64)
        self._row = {m: i for i, m in enumerate(self.movie_ids.tolist())}
        self.genre_names = sorted({g for gs in self.genres for g in gs})
        self._genre_masks = {g.lower(): np.array([g in gs for gs in self.genres], dtype=bool)
                             for g in self.genre_names}
        self._lower_titles = [t.lower() for t in self.titles]
        # The year in a MovieLens title ("Toy Story (1995)", "Fargo (2014-)"); 0 when it has none.
        found = [YEAR.search(t) for t in self.titles]
        self.years = np.array([int(m[1]) if m else 0 for m in found], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.movie_ids)

    def has(self, movie: int) -> bool:
        return movie in self._row

    def row(self, movie: int) -> int | None:
        """The movie's catalogue row, None for an unknown id."""
        return self._row.get(movie)

    def genre_mask(self, genre: str) -> np.ndarray | None:
        """Which rows are of ``genre`` (any case); None for a genre the catalogue does not have."""
        return self._genre_masks.get(genre.lower())

    def search(self, needle: str, counts: np.ndarray, limit: int, allowed: np.ndarray | None = None) -> list[int]:
        """Rows whose title contains ``needle`` (lower case), most rated first; only ``allowed`` rows if given."""
        hits = [i for i, t in enumerate(self._lower_titles) if needle in t and (allowed is None or allowed[i])]
        hits.sort(key=lambda i: (-counts[i], self.movie_ids[i]))
        return hits[:limit]

    def as_json(self) -> dict:
        return {"movie_ids": self.movie_ids.tolist(), "titles": self.titles, "genres": [list(g) for g in self.genres]}

    @classmethod
    def from_json(cls, data: dict) -> Catalogue:
        return cls(np.array(data["movie_ids"], dtype=np.int64), list(data["titles"]),
                   [tuple(g) for g in data["genres"]])


@dataclass(frozen=True)
class Histories:
    """Every user's ratings, grouped by user (CSR): ``users`` sorted, user ``users[i]`` rated
    ``rows[starts[i]:starts[i + 1]]`` (ascending) with ``values`` there; and per catalogue row, how many
    users rated it (``counts``) and the sum of their ratings (``sums``), computed once by the trainer."""

    users: np.ndarray  # int64
    starts: np.ndarray  # int64, len(users) + 1
    rows: np.ndarray  # int32
    values: np.ndarray  # float32: every MovieLens rating (whole or half stars) is exact
    counts: np.ndarray  # int64, per catalogue row
    sums: np.ndarray  # float64, per catalogue row

    FIELDS = ("users", "starts", "rows", "values", "counts", "sums")

    @classmethod
    def build(cls, users: np.ndarray, rows: np.ndarray, values: np.ndarray, n_rows: int) -> Histories:
        """Group (user, row, value) triples over a catalogue of ``n_rows``; a later triple of the same user and
        row replaces an earlier one."""
        users, rows = np.asarray(users, dtype=np.int64), np.asarray(rows, dtype=np.int32)
        order = np.lexsort((np.arange(len(users)), rows, users))  # by user, row, then input order
        users, rows, values = users[order], rows[order], np.asarray(values)[order]
        last = np.ones(len(users), dtype=bool)
        last[:-1] = (users[1:] != users[:-1]) | (rows[1:] != rows[:-1])
        users, rows, values = users[last], rows[last], values[last].astype(np.float32)
        ids, starts = np.unique(users, return_index=True)
        return cls(ids, np.append(starts, len(users)).astype(np.int64), rows, values,
                   np.bincount(rows, minlength=n_rows).astype(np.int64),
                   np.bincount(rows, weights=values, minlength=n_rows))

    def of(self, user: int) -> UserRatings | None:
        i = int(np.searchsorted(self.users, user))
        if i >= len(self.users) or self.users[i] != user:
            return None
        lo, hi = self.starts[i], self.starts[i + 1]
        return UserRatings(np.asarray(self.rows[lo:hi]), self.values[lo:hi].astype(np.float64))

    def __len__(self) -> int:
        return int(len(self.values))
