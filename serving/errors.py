"""What the serving side raises for a caller's mistake or a passing condition; app.py turns each into JSON."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from storage.store import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")


class InputError(ValueError):
    """The caller asked for something invalid; the message says what, ``status`` the HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


class NotFound(LookupError):
    """The caller named a movie that does not exist."""


class Unavailable(InputError):
    """The service cannot answer yet or right now (no published model, the store failed): a 503."""

    def __init__(self, message: str):
        super().__init__(message, 503)


class StoreUnavailable(Unavailable):
    """The ratings store could not take a write; nothing of it was kept."""


def stored(write: Callable[[], T], what: str, done: str = "stored") -> T:
    """``write()``; a store that fails it is logged and answered 503 (StoreUnavailable), saying ``what``
    could not be ``done`` and that nothing changed (a write is all or nothing)."""
    try:
        return write()
    except StoreError as exc:
        log.error("%s", exc)
        raise StoreUnavailable(f"{what} could not be {done}; nothing was changed, try again later") from None
