"""One published version in service, with every rating posted after it folded in."""

from __future__ import annotations

import logging

import numpy as np

from serving.catalogue import NO_RATINGS, UserRatings
from serving.snapshot import Snapshot
from storage.ratings import Changes
from storage.versions import Version

log = logging.getLogger(__name__)


class Served:
    """A loaded version plus the posted ratings it has not seen.

    ``posted`` holds the merged ratings of every user who posted after the
    version's request ``seq``; ``snapshot.folded`` their vectors, recomputed
    against the version's models; ``counts`` and ``sums`` follow.  ``synced`` is
    the last request folded in.  The recommender applies changes under its lock;
    readers use whatever they find, as every assignment here replaces a whole value.
    """

    def __init__(self, version: Version):
        self.version = version
        self.catalogue = version.catalogue
        self.histories = version.histories
        self.scale = version.models.scale
        self.snapshot = Snapshot.build(version.models, self.catalogue.movie_ids, version.number, version.seq)
        n = len(self.catalogue)
        self.counts = self.histories.counts(n)
        self.sums = self.histories.sums(n)
        self.posted: dict[int, UserRatings] = {}
        self.synced = version.seq

    @property
    def number(self) -> int:
        return self.version.number

    @property
    def seq(self) -> int:
        return self.version.seq

    def ratings_of(self, user: int) -> UserRatings | None:
        """The user's current ratings: the version's, with everything posted since over them."""
        posted = self.posted.get(user)
        return posted if posted is not None else self.histories.of(user)

    def apply(self, upto: int, changes: Changes) -> None:
        """Fold in ratings posted up to request ``upto`` (newest per user and movie)."""
        for user, movies in changes.items():
            known = {}
            for movie, rating in movies.items():
                if self.catalogue.has(movie):
                    known[self.catalogue.row(movie)] = rating
                else:  # the version's catalogue lost the movie (another dataset); serve the rest
                    log.warning("posted rating of user %d: movie %d is not in the catalogue; skipped", user, movie)
            before = self.ratings_of(user)
            after = (before or NO_RATINGS).with_posted(known)
            if before is not None:
                np.subtract.at(self.counts, before.rows, 1)
                np.subtract.at(self.sums, before.rows, before.ratings)
            np.add.at(self.counts, after.rows, 1)
            np.add.at(self.sums, after.rows, after.ratings)
            self.posted[user] = after
            self.snapshot.folded[user] = self.snapshot.fold(after.rows, after.ratings)
        self.synced = max(self.synced, upto)
