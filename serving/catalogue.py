"""What a published version says about movies and users besides the models: the catalogue and every
user's ratings as of the version.

The trainer builds both from the dataset and the stored posted ratings; an API
process loads them with the version, so it needs neither the dataset nor Spark.
Rows are catalogue rows: a movie's position in the sorted ``movie_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serving.errors import InputError, NotFound


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

    def __len__(self) -> int:
        return len(self.movie_ids)

    def has(self, movie: int) -> bool:
        return movie in self._row

    def row(self, movie: int) -> int:
        """The movie's catalogue row; NotFound for an unknown id."""
        row = self._row.get(movie)
        if row is None:
            raise NotFound(f"unknown movie id {movie}")
        return row

    def rows_of(self, movie_ids) -> np.ndarray:
        """Rows of known movie ids (the caller checked them)."""
        return np.array([self._row[m] for m in movie_ids], dtype=np.int32)

    def genre_mask(self, genre: str | None) -> np.ndarray | None:
        """Which rows are of ``genre`` (any case); None for no genre; InputError naming the known ones."""
        if not genre:
            return None
        mask = self._genre_masks.get(genre.lower())
        if mask is None:
            raise InputError(f"unknown genre {genre!r}; known genres: {', '.join(self.genre_names)}")
        return mask

    def search(self, query: str, counts: np.ndarray, limit: int) -> list[int]:
        """Rows whose title contains ``query`` (case-insensitive), most rated first."""
        needle = query.strip().lower()
        if not needle:
            raise InputError("q must not be empty")
        hits = [i for i, t in enumerate(self._lower_titles) if needle in t]
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
    ``rows[starts[i]:starts[i + 1]]`` (ascending) with ``values`` there."""

    users: np.ndarray  # int64
    starts: np.ndarray  # int64, len(users) + 1
    rows: np.ndarray  # int32
    values: np.ndarray  # float32: every MovieLens rating (whole or half stars) is exact

    @classmethod
    def build(cls, users: np.ndarray, rows: np.ndarray, values: np.ndarray) -> Histories:
        """Group (user, row, value) triples; a later triple of the same user and row replaces an earlier one."""
        users, rows = np.asarray(users, dtype=np.int64), np.asarray(rows, dtype=np.int32)
        order = np.lexsort((np.arange(len(users)), rows, users))  # by user, row, then input order
        users, rows, values = users[order], rows[order], np.asarray(values)[order]
        last = np.ones(len(users), dtype=bool)
        last[:-1] = (users[1:] != users[:-1]) | (rows[1:] != rows[:-1])
        users, rows, values = users[last], rows[last], values[last]
        ids, starts = np.unique(users, return_index=True)
        return cls(ids, np.append(starts, len(users)).astype(np.int64), rows, values.astype(np.float32))

    def of(self, user: int) -> UserRatings | None:
        i = int(np.searchsorted(self.users, user))
        if i >= len(self.users) or self.users[i] != user:
            return None
        lo, hi = self.starts[i], self.starts[i + 1]
        return UserRatings(self.rows[lo:hi], self.values[lo:hi].astype(np.float64))

    def __len__(self) -> int:
        return int(len(self.values))

    def counts(self, n_rows: int) -> np.ndarray:
        """How many users rated each row."""
        return np.bincount(self.rows, minlength=n_rows).astype(np.int64)

    def sums(self, n_rows: int) -> np.ndarray:
        """The sum of each row's ratings."""
        return np.bincount(self.rows, weights=self.values.astype(np.float64), minlength=n_rows)
