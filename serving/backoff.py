"""When to try a failing step again: after 1 s, doubling to 60 s, from the first success on at once."""

from __future__ import annotations

from collections.abc import Callable, Hashable

FIRST, MOST = 1.0, 60.0


class Backoff:
    """The waits of one step that may fail for a passing reason (a full disk, EMFILE, a store that is away),
    per ``what`` it was tried on (a version number): another ``what`` starts afresh.  ``clock`` is read at
    each call, so a test can move it."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._what: Hashable = None
        self._delay = 0.0
        self._at = 0.0

    def ready(self, what: Hashable = None) -> bool:
        """Whether ``what`` may be tried now."""
        return what != self._what or self._clock() >= self._at

    def failed(self, what: Hashable = None) -> float:
        """``what`` failed again: the seconds until the next try."""
        self._delay = FIRST if what != self._what else min(max(2 * self._delay, FIRST), MOST)
        self._what, self._at = what, self._clock() + self._delay
        return self._delay

    def succeeded(self) -> None:
        self._what, self._delay, self._at = None, 0.0, 0.0
