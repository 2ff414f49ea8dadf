"""What may be shown, whatever the version: each user's hidden movies and the operators' movie rules.

One :class:`Shelf` per API process, kept up to date from the store with the ratings (``Store.changes``:
the same freshness read per request, storage/people.py writes them).  A movie rule hides a movie, or
shows it only between two dates (``available_from`` and ``available_until``, ISO dates, UTC, both days
included; either may be absent).  Every list goes through :mod:`serving.lists`, which asks the shelf which
movies to leave out.  The clock is injectable (``now``), so a test opens and closes a window without sleeping.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serving.errors import InputError
from storage.store import Changes


@dataclass(frozen=True)
class MovieRule:
    """An operator's rule for one movie: ``hidden``, or shown only from/until the given days (UTC)."""

    hidden: bool = False
    available_from: dt.date | None = None
    available_until: dt.date | None = None

    def shown_on(self, day: dt.date) -> bool:
        if self.hidden:
            return False
        return (self.available_from is None or day >= self.available_from) and \
            (self.available_until is None or day <= self.available_until)

    def as_json(self) -> dict:
        return {"hidden": self.hidden,
                "available_from": None if self.available_from is None else self.available_from.isoformat(),
                "available_until": None if self.available_until is None else self.available_until.isoformat()}

    @classmethod
    def from_body(cls, body) -> MovieRule:
        """A rule from a request's JSON object; InputError naming what is wrong."""
        if not isinstance(body, dict) or not body:
            raise InputError('the body must be a JSON object such as {"hidden": true} or '
                             '{"available_from": "2026-12-24", "available_until": "2027-01-07"}')
        unknown = sorted(set(body) - {"hidden", "available_from", "available_until"})
        if unknown:
            raise InputError(f"unknown field(s) {', '.join(map(repr, unknown))}: a movie rule has hidden, "
                             "available_from and available_until")
        hidden = body.get("hidden", False)
        if not isinstance(hidden, bool):
            raise InputError("hidden must be true or false")
        start, end = (_date(body.get(k), k) for k in ("available_from", "available_until"))
        if start and end and end < start:
            raise InputError(f"available_until ({end}) is before available_from ({start})")
        if not hidden and start is None and end is None:
            raise InputError("the rule changes nothing: give hidden: true or a date (DELETE clears a rule)")
        return cls(hidden, start, end)

    @classmethod
    def from_json(cls, text: str) -> MovieRule:
        data = json.loads(text)
        return cls(bool(data.get("hidden")), *(None if data.get(k) is None else dt.date.fromisoformat(data[k])
                                                for k in ("available_from", "available_until")))


def _date(value, name: str) -> dt.date | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 10:
        raise InputError(f"{name} must be an ISO date such as 2026-12-24, not {value!r}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InputError(f"{name} must be an ISO date such as 2026-12-24, not {value!r}") from None


class Shelf:
    """Hidden movies per user and the movie rules, as of request ``synced``; changes replace whole values,
    so readers need no lock."""

    def __init__(self, now: Callable[[], float] = time.time):
        self.now = now
        self.hidden: dict[int, np.ndarray] = {}  # user -> movie ids hidden (sorted)
        self.rules: dict[int, MovieRule] = {}
        self.synced = 0
        self._lock = threading.Lock()
        self._withdrawn: tuple[dt.date, dict, np.ndarray] | None = None  # (day, rules, ids) cached

    def apply(self, upto: int, changes: Changes) -> None:
        """Fold in changes up to request ``upto`` (any suffix again is harmless: see storage/people.py)."""
        with self._lock:
            if changes.users:
                hidden = dict(self.hidden)
                for user, change in changes.users.items():
                    if not change.forgotten and not change.hidden:
                        continue
                    mine = set() if change.forgotten else set(hidden.get(user, np.zeros(0, np.int64)).tolist())
                    for movie, on in change.hidden.items():
                        (mine.add if on else mine.discard)(movie)
                    if mine:
                        hidden[user] = np.array(sorted(mine), dtype=np.int64)
                    else:
                        hidden.pop(user, None)
                self.hidden = hidden
            if changes.rules:
                rules = dict(self.rules)
                for movie, text in changes.rules.items():
                    if text is None:
                        rules.pop(movie, None)
                    else:
                        rules[movie] = MovieRule.from_json(text)
                self.rules = rules
            self.synced = max(self.synced, upto)

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.now(), dt.UTC).date()

    def withdrawn(self) -> np.ndarray:
        """The ids of the movies no list may show today (hidden, or outside their window), sorted."""
        day, rules = self.today(), self.rules
        cached = self._withdrawn
        if cached is not None and cached[0] == day and cached[1] is rules:
            return cached[2]
        ids = np.array(sorted(m for m, r in rules.items() if not r.shown_on(day)), dtype=np.int64)
        self._withdrawn = (day, rules, ids)
        return ids

    def hidden_by(self, user: int | None) -> np.ndarray:
        """The movie ids ``user`` hid (none for no user)."""
        if user is None:
            return np.zeros(0, np.int64)
        return self.hidden.get(user, np.zeros(0, np.int64))
