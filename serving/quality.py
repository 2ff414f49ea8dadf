"""Live quality: how the served models do on the ratings people post (prequential evaluation).

Before a posted rating is stored, the version in service predicts it; once it
is acknowledged, the pair (prediction, rating) counts towards that version's
live RMSE and MAE over its last ``window`` posted ratings.  The live hit rate:
of the posted ratings of 4 stars or more by users who had been shown a top-N
list, the share whose movie was in the last list shown to that user.  Figures
are kept per version, so a new version's figures stand next to the previous
one's.  Each API process keeps its own (in memory), as Prometheus metrics are.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

LIKED = 4.0  # a posted rating this high is a movie the user wanted
WINDOW = 1000  # posted ratings per version the live RMSE and MAE cover
USERS_REMEMBERED = 100_000  # users whose last served list is kept (least recently served go first)
VERSIONS_KEPT = 5


@dataclass
class VersionQuality:
    errors: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # (user, predicted - actual)
    liked: int = 0  # liked ratings by users who had been shown a list
    hits: int = 0  # of those, for a movie in that list

    def summary(self, version: int) -> dict:
        n = len(self.errors)
        return {"version": version, "ratings": n,
                "rmse": round(math.sqrt(sum(e * e for _, e in self.errors) / n), 4) if n else None,
                "mae": round(sum(abs(e) for _, e in self.errors) / n, 4) if n else None,
                "liked": self.liked, "hit_rate": round(self.hits / self.liked, 4) if self.liked else None}


class LiveQuality:
    """Per-version live figures; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._versions: OrderedDict[int, VersionQuality] = OrderedDict()
        self._shown: OrderedDict[int, frozenset[int]] = OrderedDict()
        self._forgotten: OrderedDict[int, int] = OrderedDict()  # user -> the request a forget was folded in by

    def shown(self, user: int, movies: list[int]) -> None:
        """A top-N list was served to ``user``."""
        with self._lock:
            self._shown[user] = frozenset(movies)
            self._shown.move_to_end(user)
            if len(self._shown) > USERS_REMEMBERED:
                self._shown.popitem(last=False)

    def posted(self, version: int, user: int, movies: list[int], predicted: list[float],
               actual: list[float], seq: int) -> None:
        """Acknowledged ratings (stored by request ``seq``) and what ``version`` predicted for them before they
        were stored; not counted when the user was forgotten by then (a forget folded in between the commit
        and this call deleted them, and its records must not come back)."""
        with self._lock:
            if self._forgotten.get(user, -1) >= seq:
                return
            quality = self._versions.get(version)
            if quality is None:
                quality = self._versions[version] = VersionQuality()
                while len(self._versions) > VERSIONS_KEPT:
                    self._versions.popitem(last=False)
            quality.errors.extend((user, p - a) for p, a in zip(predicted, actual))
            shown = self._shown.get(user)
            if shown is not None:
                for movie, rating in zip(movies, actual):
                    if rating >= LIKED:
                        quality.liked += 1
                        quality.hits += movie in shown

    def forget(self, user: int, upto: int = 0) -> None:
        """Drop everything kept of ``user``, forgotten by a request up to ``upto``: their errors and their last
        list (the liked and hit counts are plain totals, with nobody's id); ratings stored by a request up to
        ``upto`` are not counted later."""
        with self._lock:
            self._forgotten[user] = max(upto, self._forgotten.pop(user, 0))
            if len(self._forgotten) > USERS_REMEMBERED:
                self._forgotten.popitem(last=False)
            self._shown.pop(user, None)
            for quality in self._versions.values():
                if any(u == user for u, _ in quality.errors):
                    quality.errors = deque(((u, e) for u, e in quality.errors if u != user), maxlen=WINDOW)

    def summary(self) -> list[dict]:
        """Each version's figures, newest first."""
        with self._lock:
            return [q.summary(v) for v, q in sorted(self._versions.items(), reverse=True)]
