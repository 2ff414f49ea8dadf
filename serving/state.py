"""One published version in service, with every rating posted after it folded in."""

from __future__ import annotations

import logging

import numpy as np

from serving.errors import InputError, NotFound
from serving.snapshot import Snapshot
from storage.catalogue import NO_RATINGS, UserRatings
from storage.store import Changes
from storage.versions import Version

log = logging.getLogger(__name__)


class Served:
    """A loaded version plus the posted ratings it has not seen.

    ``posted`` holds the merged ratings of every user who posted after the
    version's request ``seq``; ``snapshot.folded`` their vectors, recomputed
    against the version's models when the user is next asked about;
    ``counts`` and ``sums`` follow.  ``synced`` is
    the last request folded in.  The recommender applies changes under its lock;
    readers use whatever they find, as every assignment here replaces a whole value.
    """

    def __init__(self, version: Version, base: int | None = None):
        """``base``: the last of the store's requests the version covers (None: its ``seq``; 0 for a version
        fitted on another store, or before the store was restored, so that every rating it holds is folded in)."""
        self.version = version
        self.base = version.seq if base is None else base
        self.catalogue = version.catalogue
        self.histories = version.histories
        self.scale = version.models.scale
        self.snapshot = Snapshot.build(version.models, self.catalogue.movie_ids, version.number, version.seq,
                                       version.layout)
        # Each movie's ratings count and sum, as one pair: a reader of both (a mean) never sees one old and
        # one new.  Fold-ins replace the pair whole.
        self.tallies = (np.array(self.histories.counts), np.array(self.histories.sums))
        self.posted: dict[int, UserRatings] = {}
        self.synced = self.base

    @property
    def counts(self) -> np.ndarray:
        return self.tallies[0]

    @property
    def sums(self) -> np.ndarray:
        return self.tallies[1]

    @property
    def number(self) -> int:
        return self.version.number

    @property
    def seq(self) -> int:
        """The last of the store's requests the version was trained on (its base)."""
        return self.base

    def row(self, movie: int) -> int:
        """The movie's catalogue row; NotFound for an unknown id."""
        row = self.catalogue.row(movie)
        if row is None:
            raise NotFound(f"unknown movie id {movie}")
        return row

    def genre_mask(self, genre: str | None) -> np.ndarray | None:
        """Which rows are of ``genre`` (any case); None for no genre; InputError naming the known ones."""
        if not genre:
            return None
        mask = self.catalogue.genre_mask(genre)
        if mask is None:
            raise InputError(f"unknown genre {genre!r}; known genres: {', '.join(self.catalogue.genre_names)}")
        return mask

    def ratings_of(self, user: int) -> UserRatings | None:
        """The user's current ratings: the version's, with everything posted since over them."""
        posted = self.posted.get(user)
        return posted if posted is not None else self.histories.of(user)

    def apply(self, upto: int, changes: Changes) -> None:
        """Fold in what changed up to request ``upto``: users forgotten (nothing of theirs is left: no rating,
        no count, and their trained vectors are not used), ratings withdrawn, then ratings posted (newest
        per user and movie).

        ``counts`` and ``sums`` are changed in new arrays, assigned once all changes are in: a reader
        holding the old ones never sees them half changed."""
        counts, sums = self.counts.copy(), self.sums.copy()
        for user, change in changes.users.items():
            if not (change.forgotten or change.unrated or change.ratings):
                continue  # only hidden movies changed (serving/shelf.py)
            known = {}
            for movie, rating in change.ratings.items():
                row = self.catalogue.row(movie)
                if row is not None:
                    known[row] = rating
                else:  # the version's catalogue lost the movie (another dataset); serve the rest
                    log.warning("posted rating of user %d: movie %d is not in the catalogue; skipped", user, movie)
            before = self.ratings_of(user)
            after = NO_RATINGS if change.forgotten else (before or NO_RATINGS)
            if change.unrated:
                after = after.without({r for r in map(self.catalogue.row, change.unrated) if r is not None})
            after = after.with_posted(known)
            if before is not None:  # rows are unique within one user's ratings: plain indexing is exact
                counts[before.rows] -= 1
                sums[before.rows] -= before.ratings
            counts[after.rows] += 1
            sums[after.rows] += after.ratings
            self.posted[user] = after
            # No rating left: a stranger to both models, whatever the version was trained on.
            self.snapshot.posted(user, after)
        self.tallies = (counts, sums)
        self.synced = max(self.synced, upto)
