"""The one place every list's candidates are chosen: the request's filters, the operators' movie rules,
the user's hidden movies and what the user rated.

Top-N, ``/recommend``, similar movies, the page and title search all ask :func:`allowed` which catalogue
rows they may show; an empty list asks :func:`empty_reason` which of those emptied it.  NumPy masks over
the catalogue (its genre masks and title years are computed once per version), and sorted id arrays
looked up with ``searchsorted``: no store read and no Python loop over the catalogue per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from serving.errors import InputError
from serving.shelf import Shelf
from serving.snapshot import candidates

MAX_EXCLUDE = 1000  # ids one request may exclude
YEARS = re.compile(r"(\d{4})(?:-(\d{4}))?", re.ASCII)
IDS = re.compile(r"\d{1,18}(?:,\d{1,18})*", re.ASCII)  # ASCII digits only: int() would take "²" or "٣"
NO_IDS = np.zeros(0, np.int64)


@dataclass(frozen=True)
class ListFilters:
    """A request's filters: ``exclude`` ids, any of ``genres``, none of ``exclude_genres``, ``years`` (first,
    last) of the title's year."""

    exclude: np.ndarray = field(default_factory=lambda: NO_IDS, compare=False)  # int64, as given
    genres: tuple[str, ...] = ()
    exclude_genres: tuple[str, ...] = ()
    years: tuple[int, int] | None = None

    @classmethod
    def parse(cls, exclude: str | None = None, genre: str | None = None, exclude_genre: str | None = None,
              year: str | None = None) -> ListFilters:
        """Filters from query values (``exclude=1,2``, ``genre=Comedy|Romance``, ``exclude_genre=Horror``,
        ``year=1990-1999`` or ``year=1995``); InputError naming a malformed one.  Genre names are checked
        against the catalogue when the list is made."""
        ids = NO_IDS
        if exclude:
            # One regex and one C parse: a Python int() per id cost a 1,000-id request about 0.3 ms.
            exclude = exclude.replace(" ", "")
            if exclude.count(",") >= MAX_EXCLUDE:
                raise InputError(f"exclude may list at most {MAX_EXCLUDE} movie ids, not {exclude.count(',') + 1}")
            if not IDS.fullmatch(exclude):
                raise InputError("exclude must be movie ids separated by commas, such as exclude=1,296,318")
            ids = np.fromstring(exclude, dtype=np.int64, sep=",")
        years = None
        if year is not None:
            match = YEARS.fullmatch(year.strip())
            if not match:
                raise InputError(f"year must be a year or a range of years such as 1995 or 1990-1999, not {year!r}")
            first, last = int(match[1]), int(match[2] or match[1])
            if last < first:
                raise InputError(f"year {year!r}: the range ends before it starts")
            years = (first, last)
        return cls(ids, _genres(genre, "genre"), _genres(exclude_genre, "exclude_genre"), years)

    def __bool__(self) -> bool:
        return bool(len(self.exclude) or self.genres or self.exclude_genres or self.years)

    def as_json(self) -> dict:
        """The filters a list was made with, as its answer echoes them (none: nothing)."""
        out: dict = {}
        if len(self.exclude):
            out["exclude"] = len(self.exclude)
        if self.genres:
            out["genre"] = "|".join(self.genres)
        if self.exclude_genres:
            out["exclude_genre"] = "|".join(self.exclude_genres)
        if self.years:
            out["year"] = f"{self.years[0]}-{self.years[1]}"
        return out


NO_FILTERS = ListFilters()


def _genres(value: str | None, name: str) -> tuple[str, ...]:
    if value is None or not value.strip():
        return ()
    names = tuple(g.strip() for g in value.split("|"))
    if not all(names) or len(names) > 50:
        raise InputError(f"{name} must be genre names separated by |, such as {name}=Comedy|Romance")
    return names


def _rows(served, ids: np.ndarray) -> np.ndarray:
    """The catalogue rows of those of ``ids`` the catalogue has."""
    movie_ids = served.catalogue.movie_ids
    if not len(ids) or not len(movie_ids):
        return np.zeros(0, np.int64)
    at = np.minimum(np.searchsorted(movie_ids, ids), len(movie_ids) - 1)
    return at[movie_ids[at] == ids]


def _stages(served, shelf: Shelf, user: int | None, filters: ListFilters) -> list[tuple[str, object]]:
    """Each rule a list's candidates pass, as (what it is, a mask or rows to leave out), in the order an
    empty list's reason checks them."""
    catalogue = served.catalogue
    stages: list[tuple[str, object]] = []
    if filters.genres:
        mask = np.zeros(len(catalogue), dtype=bool)
        for genre in filters.genres:
            mask |= served.genre_mask(genre)
        stages.append((f"genre={'|'.join(filters.genres)}", mask))
    if filters.exclude_genres:
        mask = np.ones(len(catalogue), dtype=bool)
        for genre in filters.exclude_genres:
            mask &= ~served.genre_mask(genre)
        stages.append((f"exclude_genre={'|'.join(filters.exclude_genres)}", mask))
    if filters.years:
        first, last = filters.years
        years = catalogue.years
        stages.append((f"year={first}-{last}", (years >= max(first, 1)) & (years <= last)))  # 0: no year
    if len(filters.exclude):
        stages.append(("exclude", _rows(served, filters.exclude)))  # searchsorted takes them unsorted
    withdrawn = shelf.withdrawn()
    if len(withdrawn):
        stages.append(("the operators' rules (hidden or unavailable movies)", _rows(served, withdrawn)))
    hidden = shelf.hidden_by(user)
    if len(hidden):
        stages.append(("your not-interested movies", _rows(served, hidden)))
    return stages


def allowed(served, shelf: Shelf, user: int | None, filters: ListFilters = NO_FILTERS) -> np.ndarray | None:
    """Which catalogue rows the list may show, before the ratings count and the user's own ratings (None:
    every row)."""
    stages = _stages(served, shelf, user, filters)
    if not stages:
        return None
    mask = np.ones(len(served.catalogue), dtype=bool)
    for _, rule in stages:
        if rule.dtype == bool:
            mask &= rule
        else:
            mask[rule] = False
    return mask


def choose(served, shelf: Shelf, user: int | None, min_count: int, filters: ListFilters = NO_FILTERS,
           rated_rows: np.ndarray | None = None) -> np.ndarray:
    """The candidate rows of a list, ascending (see serving/snapshot.py's ``candidates``)."""
    return candidates(served.counts, min_count, rated_rows, allowed(served, shelf, user, filters))


def empty_reason(served, shelf: Shelf, user: int | None, min_count: int, filters: ListFilters = NO_FILTERS,
                 rated_rows: np.ndarray | None = None) -> str:
    """Why a list is empty: the first rule (the ratings count, then the filters in the order given, the
    operators' rules, the user's hidden movies, what the user rated) after which no movie is left."""
    counts = served.counts
    if not len(counts):
        return "no movie in the catalogue"
    largest = int(counts.max())
    if min_count > largest:
        return f"no movie has {min_count} ratings or more: the most-rated has {largest}"
    mask = counts >= min_count
    for label, rule in _stages(served, shelf, user, filters):
        before = int(mask.sum())
        if rule.dtype == bool:
            mask = mask & rule
        else:
            mask = mask.copy()
            mask[rule] = False
        if not mask.any():
            return f"no movie is left after {label}: {before} movie(s) with at least {min_count} ratings passed " \
                   "the rules before it"
    where = f" in {'|'.join(filters.genres)}" if filters.genres else ""
    others = len(filters.exclude) or filters.exclude_genres or filters.years
    return f"you have rated all {int(mask.sum())} movie(s){where} with at least {min_count} ratings" \
        + (" that pass the filters" if others else "")
